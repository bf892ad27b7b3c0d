"""The batching peers' own virtual environment (build/peers/venv), made once from
requirements-peers.txt with Debian's python3: Triton's Python stub under pytriton runs only
there (requirements-peers.txt says why). A changed requirements file rebuilds it.

    python -m scripts.bench.peers.peer_env     # make it (about 1 min the first time), print its python
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from handler.integrity import sha256_file
from scripts import repo

VENV = repo.BUILD_DIR / "peers" / "venv"
REQUIREMENTS = repo.ROOT / "requirements-peers.txt"
BASE_PYTHON = Path(os.environ.get("PEERS_BASE_PYTHON", "/usr/bin/python3"))
STAMP = VENV / ".requirements-sha256"


def python() -> Path:
    return VENV / "bin" / "python"


def ensure(progress: bool = True) -> Path:
    """The peers' python, the environment made or rebuilt first when requirements-peers.txt changed."""
    want = sha256_file(REQUIREMENTS)
    if STAMP.is_file() and STAMP.read_text() == want and python().is_file():
        return python()
    if not BASE_PYTHON.is_file():
        raise SystemExit(f"the peers need Debian's python3 at {BASE_PYTHON} (apt-get install python3-venv), "
                         "or PEERS_BASE_PYTHON pointing at a CPython 3.11 that pytriton's stub runs under")
    shutil.rmtree(VENV, ignore_errors=True)
    VENV.parent.mkdir(parents=True, exist_ok=True)
    if progress:
        print(f"[peers] creating {VENV} with {BASE_PYTHON} and {REQUIREMENTS.name} (about 1 min)", flush=True)
    subprocess.run([str(BASE_PYTHON), "-m", "venv", str(VENV)], check=True)
    pip = [str(python()), "-m", "pip", "install", "--progress-bar", "on" if progress else "off"]
    # pip compiles every installed file on one core; compileall spreads the same work over all
    # of them (on 2 cores the environment is made in about 2/3 of the time).
    subprocess.run([*pip, "-q", "--no-compile", "-r", str(REQUIREMENTS)], check=True)
    site = next(VENV.glob("lib/python3*/site-packages"))
    # Not checked: as under pip, files written for other Python versions (torch's py312 test
    # helpers) fail to compile and are never imported.
    subprocess.run([str(python()), "-m", "compileall", "-q", "-j", "0", str(site)],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    STAMP.write_text(want)
    return python()


def env(extra: dict | None = None) -> dict:
    """The environment a peer process runs in: this repository on its path (handler/, scripts/),
    one thread per OpenMP/MKL pool, nothing from our own .venv."""
    base = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH")}
    return {**base, "PYTHONPATH": str(repo.ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "PYTHONDONTWRITEBYTECODE": "1", **(extra or {})}


if __name__ == "__main__":
    print(ensure())
    sys.exit(0)
