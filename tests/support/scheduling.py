"""How the suite is scheduled (tests/conftest.py applies it): what runs first, the modules
`make test` runs alone, and what its parallel phase (`-n 2 --dist loadscope`) keeps on one
worker."""

from __future__ import annotations

# Measured first, before anything else runs: the balancer's worker kills and overload pair
# measure what this 2-core machine serves, and fail when the session's shared server (its JVM
# and two workers, idle) shares it: worker kills took 89 s beside it against 74 s alone, and
# clients got a second 503 in a row.
RUN_FIRST = ("tests/e2e/ops/test_balancer.py::",)

# Run alone first (`-m alone`): they load this machine on purpose and judge what it serves
# (latency, refusals in time, nothing lost while workers die), so a neighbour on the other core
# would fail them. The rest then runs on two workers.
ALONE = ("ops/test_balancer.py", "ops/test_balancer_uploads.py", "ops/test_overload.py")

# Modules that must share one worker in the parallel phase, beyond a module's own two halves:
# the first of them makes the peers' venv (build/peers/venv), which the others then use.
SHARED = {"peers": ("bench/test_peer_batching.py", "bench/test_peer_triton.py",
                    "deploy/test_triton_repository.py")}


def pair_of(nodeid: str) -> str:
    """tests/{unit,e2e}/AREA/test_X.py::... -> AREA/test_X.py, the name a module's halves share."""
    parts = nodeid.split("::", 1)[0].split("/")
    return "/".join(parts[2:] if parts[1] in ("unit", "e2e") else parts[1:])


def scope_of(nodeid: str) -> str:
    """What runs on one worker in the parallel phase: a module's unit and end-to-end halves
    together (so the session fixtures they share, an archive packaged into build/NAME/, a venv,
    keys, are made once, by one process), or its SHARED group."""
    pair = pair_of(nodeid)
    return next((group for group, pairs in SHARED.items() if pair in pairs), pair)
