"""A canary share behind HAProxy: stable replicas serve the current model version, canary replicas
the new one, and each group gets its share of the requests, moved at run time (docs/canary.md).

    python -m scripts.ops.canary start --stable run/replica1 --canary run/replica2 --percent 10
    python -m scripts.ops.canary set 25        # the canary's share of requests, in percent
    python -m scripts.ops.canary status        # the share, each server's weight and requests
    python -m scripts.ops.canary rollback      # share 0; returns once the canary holds no request
    python -m scripts.ops.canary render --stable 1 --canary 1 --percent 10   # the config only

The HAProxy config is config/haproxy.cfg itself (the edge's key check, limits, retries, health
checks), rendered for the replicas (balancer.render) with three changes, each for the share:
- `balance roundrobin` instead of leastconn. Weighted round robin gives each server its weight's
  share of requests whatever the load; leastconn weighs requests in flight, and with one request
  in flight at a time a 90/10 pair sent the canary 200 of 400 (docs/canary.md);
- a `default-server weight W` line before each group's server lines (HAProxy applies a
  default-server line to the servers after it), so the share holds from the first request;
- the stats socket at level admin: `set server BACKEND/SERVER weight N`, the run-time move,
  needs it. The socket stays mode 600 in the balancer's working directory.
Which server is in which group is kept in the working directory (canary.json), written at start.
A canary replica that goes DOWN gets no request: its share goes to the stable replicas.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from scripts import repo
from scripts.ops import balancer

GROUPS_FILE = "canary.json"
RENDERED_CONFIG = "haproxy-canary.cfg"
# HAProxy's largest server weight.
MAX_WEIGHT = 256
ROLLBACK_TIMEOUT_S = 30.0
BALANCE_LINE = re.compile(r"^(\s*)balance\s+leastconn\s*$", re.M)
STATS_LEVEL = re.compile(r"^(\s*stats socket .*)\blevel operator\b", re.M)


def weights(percent: int, n_stable: int, n_canary: int) -> tuple[int, int]:
    """(weight of each stable server, weight of each canary server) so that the canary group
    gets `percent` % of the requests: the groups' totals are in the ratio (100 - p) : p."""
    if not 0 <= percent <= 100:
        raise ValueError(f"the canary's share is a percentage, 0 to 100: {percent}")
    if n_stable < 1 or n_canary < 1:
        raise ValueError("at least one stable and one canary replica")
    stable, canary = (100 - percent) * n_canary, percent * n_stable
    scale = max(1, -(-max(stable, canary) // MAX_WEIGHT))
    # A share above 0 never rounds to a weight of 0 (no request at all).
    return (max(int(percent < 100), round(stable / scale)),
            max(int(percent > 0), round(canary / scale)))


def render(n_stable: int, n_canary: int, percent: int, template: Path = balancer.CONFIG) -> str:
    """config/haproxy.cfg for n_stable + n_canary replicas (replica1..: the stable ones first)
    with the canary's changes (module docstring); raises ValueError if the template lacks a line
    they replace."""
    stable_w, canary_w = weights(percent, n_stable, n_canary)
    text = balancer.render(n_stable + n_canary, template)
    text, n = BALANCE_LINE.subn(r"\1balance roundrobin", text)
    text, m = STATS_LEVEL.subn(r"\1level admin", text)
    if n != 1 or m != 1:
        raise ValueError(f"{template}: expected one `balance leastconn` and one stats socket at "
                         "level operator")
    out = [f"# Rendered by scripts/ops/canary.py from {template.name}: round robin, weights per "
           f"group ({n_stable} stable, {n_canary} canary at {percent} %), stats socket at level "
           "admin.\n"]
    for line in text.splitlines(keepends=True):
        m = balancer.SERVER_LINE.match(line)
        number = int(re.search(r"replica(\d+)", line)[1]) if m else 0
        if number in (1, n_stable + 1):
            out.append(f"{m[1]}default-server weight {stable_w if number == 1 else canary_w}\n")
        out.append(line)
    return "".join(out)


def groups(n_stable: int, n_canary: int) -> dict[str, list[str]]:
    names = [f"replica{i}" for i in range(1, n_stable + n_canary + 1)]
    return {"stable": names[:n_stable], "canary": names[n_stable:]}


def command(stats_socket: Path, line: str, timeout: float = 2.0) -> str:
    """One command of HAProxy's runtime API; its answer (empty when a `set` succeeded)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(stats_socket))
        sock.sendall(line.encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace").strip()


def read_groups(workdir: Path) -> dict:
    path = Path(workdir) / GROUPS_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no canary balancer started in {workdir} "
                                "(python -m scripts.ops.canary start)") from None


def set_share(workdir: Path, percent: int) -> dict[str, int]:
    """Give the canary group `percent` % of the requests from now on (requests in flight finish
    where they are); returns each server's new weight. Raises RuntimeError if HAProxy refuses."""
    workdir = Path(workdir).resolve()
    grp = read_groups(workdir)
    stable_w, canary_w = weights(percent, len(grp["stable"]), len(grp["canary"]))
    new = {**dict.fromkeys(grp["stable"], stable_w), **dict.fromkeys(grp["canary"], canary_w)}
    # The group gaining share first: during the few microseconds between the two commands the
    # share is between the old and the new one, never beyond either.
    order = sorted(new, key=lambda name: (name in grp["canary"]) == (percent < grp["percent"]))
    for name in order:
        answer = command(workdir / balancer.SOCKET_FILE,
                         f"set server {balancer.BACKEND}/{name} weight {new[name]}")
        if answer:
            raise RuntimeError(f"HAProxy refused the weight of {name}: {answer}")
    (workdir / GROUPS_FILE).write_text(json.dumps({**grp, "percent": percent}))
    return new


def status(workdir: Path) -> dict:
    """{'percent', 'servers': {name: {group, status, weight, in_flight, requests}}}: each
    server's row of HAProxy's `show stat` (weight: the effective one, reduced during slowstart)."""
    workdir = Path(workdir).resolve()
    grp = read_groups(workdir)
    group_of = {name: g for g in ("stable", "canary") for name in grp[g]}
    rows = balancer.read_stats(workdir / balancer.SOCKET_FILE)
    servers = {row["svname"]: {"group": group_of.get(row["svname"], "?"), "status": row["status"],
                               "weight": int(row["weight"]), "in_flight": int(row["scur"]),
                               "requests": int(row["stot"])}
               for row in rows if row["pxname"] == balancer.BACKEND and row["svname"] in group_of}
    return {"percent": grp["percent"], "servers": servers}


def rollback(workdir: Path, timeout: float = ROLLBACK_TIMEOUT_S) -> float:
    """Share 0: no new request goes to a canary replica; waits until the requests they hold are
    answered (then they can be stopped). Returns the seconds waited; TimeoutError past `timeout`."""
    set_share(workdir, 0)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        held = sum(s["in_flight"] for s in status(workdir)["servers"].values() if s["group"] == "canary")
        if not held:
            return time.monotonic() - t0
        time.sleep(0.1)
    raise TimeoutError(f"the canary replicas still hold requests after {timeout:.0f} s")


def start(stable: Sequence[str], canary: Sequence[str], percent: int,
          port: int = balancer.DEFAULT_PORT, workdir: Path = balancer.DEFAULT_WORKDIR,
          model: str = repo.DEFAULT_MODEL, key: str | None = None) -> balancer.Balancer:
    """balancer.start with the canary's config, stable replicas first; each replica as
    `--replica` takes it (HOST:PORT, or a working directory: the agent watches its workers)."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / RENDERED_CONFIG
    config.write_text(render(len(stable), len(canary), percent))
    (workdir / GROUPS_FILE).write_text(json.dumps({**groups(len(stable), len(canary)),
                                                   "percent": percent}))
    replicas, watch = zip(*map(balancer.resolve_replica, [*stable, *canary]))
    return balancer.start(replicas, port, workdir, key=key, model=model, config=config, watch=watch)


def format_status(st: dict) -> str:
    lines = [f"canary share: {st['percent']} %",
             f"  {'server':<10} {'group':<7} {'status':<8} {'weight':>6} {'in flight':>9} {'requests':>9}"]
    for name, s in st["servers"].items():
        lines.append(f"  {name:<10} {s['group']:<7} {s['status']:<8} {s['weight']:>6} "
                     f"{s['in_flight']:>9} {s['requests']:>9}")
    return "\n".join(lines)


def run_until_signal(bal: balancer.Balancer) -> int:
    """Hold HAProxy until SIGTERM or SIGINT (then a soft stop: 0), or until it exits (1)."""
    stopping: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stopping.append(signum))
    while not stopping and bal.alive():
        time.sleep(0.2)
    if not stopping:
        print(f"haproxy exited; see {bal.workdir / balancer.LOG_FILE}", file=sys.stderr)
        return 1
    bal.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["start", "set", "status", "rollback", "render"])
    parser.add_argument("percent", nargs="?", type=int, help="set: the canary's share (0-100)")
    parser.add_argument("--stable", action="append", default=[], metavar="HOST:PORT|DIR",
                        help="start: a replica serving the current version (repeat for each); "
                             "render: their number")
    parser.add_argument("--canary", action="append", default=[], metavar="HOST:PORT|DIR",
                        help="start: a replica serving the new version; render: their number")
    parser.add_argument("--percent", type=int, dest="start_percent", default=10,
                        help="start, render: the canary's share at start (default 10)")
    parser.add_argument("--port", type=int, default=balancer.DEFAULT_PORT)
    parser.add_argument("--workdir", type=Path, default=balancer.DEFAULT_WORKDIR,
                        help="the balancer's: key file, stats socket, log, canary.json")
    parser.add_argument("--model", default=repo.DEFAULT_MODEL)
    args = parser.parse_args(argv)
    try:
        if args.action == "render":
            print(render(int(args.stable[0]), int(args.canary[0]), args.start_percent), end="")
        elif args.action == "set":
            if args.percent is None:
                parser.error("set needs the canary's share: set PERCENT")
            set_share(args.workdir, args.percent)
            print(format_status(status(args.workdir)))
        elif args.action == "status":
            print(format_status(status(args.workdir)))
        elif args.action == "rollback":
            took = rollback(args.workdir)
            print(f"rolled back: the canary gets no request; its last ones answered in {took:.1f} s\n"
                  f"{format_status(status(args.workdir))}")
        else:
            if not args.stable or not args.canary:
                parser.error("start needs --stable and --canary replicas")
            bal = start(args.stable, args.canary, args.start_percent, args.port, args.workdir, args.model)
            print(f"HAProxy at {bal.url}: canary {args.start_percent} %; key file "
                  f"{bal.workdir / balancer.KEY_FILE}\n  move it: python -m scripts.ops.canary set N "
                  f"--workdir {args.workdir}", flush=True)
            return run_until_signal(bal)
    except (OSError, RuntimeError, ValueError, IndexError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
