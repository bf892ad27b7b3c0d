"""The client library's `classify` CLI run as a user runs it, and the package installed alone
into a fresh venv."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from scripts.repo import ROOT


def classify(*args: str, env: dict | None = None, exe: str | None = None) -> subprocess.CompletedProcess:
    cmd = [exe] if exe else [sys.executable, "-m", "image_classifier_client"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, **(env or {})})


@contextmanager
def fresh_venv(tmp: Path) -> Iterator[Path]:
    """A venv without the system's packages, holding only the client and what it requires,
    installed from wheels built and collected here (pip wheel: the client, httpx at the version
    this environment runs, their dependencies), then with --no-index."""
    wheels, env, source = tmp / "wheels", tmp / "venv", tmp / "client"
    # A copy: setuptools builds in the source folder, and the checkout stays as it is.
    shutil.copytree(ROOT / "client", source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "-w",
                            str(wheels), str(source), f"httpx=={metadata.version('httpx')}"],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    venv.create(env, with_pip=True, system_site_packages=False)
    installed = subprocess.run([str(env / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index",
                                "--find-links", str(wheels), "image-classifier-client"],
                               capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-2000:]
    yield env
