"""The packaging CLI (`python -m scripts.packaging.package`) run as several processes at once.
Each run names its model: the stage folder (build/NAME/), the archiver's scratch folder
($TMPDIR/NAME) and the archive (EXPORT_PATH/NAME.mar) are the name's alone, so runs of distinct
names write nothing in common."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import IO

from scripts import repo


@dataclass
class _Run:
    proc: subprocess.Popen
    out: IO[bytes]
    deadline: float
    timed_out: bool = field(default=False)


class ConcurrentPackaging:
    """`start` launches one packaging and returns while it runs; `wait` waits for them all and
    fails with the output of each that did not exit 0. Leaving the block kills any still running.

    At most `max_running` at once, one per core by default: packaging times the model's
    preprocessing code against a wall-clock budget (scripts/packaging/preprocess_check.py), which
    more processes than cores would stretch."""

    def __init__(self, timeout: float = 600, max_running: int | None = None) -> None:
        self.timeout = timeout
        self.max_running = max_running or os.cpu_count() or 1
        self._runs: dict[str, _Run] = {}

    def __enter__(self) -> ConcurrentPackaging:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for run in self._runs.values():
            if run.proc.poll() is None:
                run.proc.kill()
                run.proc.wait(timeout=60)
            run.out.close()

    def start(self, *args: str) -> None:
        assert "--model-name" in args, "each concurrent packaging names its model"
        name = args[args.index("--model-name") + 1]
        assert name not in self._runs, f"two packagings of {name} would share build/{name}/"
        while self._running() >= self.max_running:  # each run ends by its deadline (_running)
            time.sleep(0.2)
        # A file, not a pipe: a full pipe would stall a run while another one is waited for.
        out = tempfile.TemporaryFile()
        proc = subprocess.Popen([sys.executable, "-m", "scripts.packaging.package", *args],
                                stdout=out, stderr=subprocess.STDOUT, cwd=repo.ROOT)
        self._runs[name] = _Run(proc, out, time.monotonic() + self.timeout)

    def wait(self) -> None:
        while self._running():
            time.sleep(0.2)
        failures = []
        for name, run in self._runs.items():
            if run.proc.returncode != 0:
                run.out.seek(0)
                status = f"still running after {self.timeout:.0f} s" if run.timed_out \
                    else f"exit {run.proc.returncode}"
                failures.append(f"packaging {name} ({status}):\n"
                                + run.out.read()[-4000:].decode(errors="replace"))
        assert not failures, "\n\n".join(failures)

    def _running(self) -> int:
        """How many runs are still going; a run past its deadline is killed first."""
        running = 0
        for run in self._runs.values():
            if run.proc.poll() is None and time.monotonic() > run.deadline:
                run.timed_out = True
                run.proc.kill()
                run.proc.wait(timeout=60)
            running += run.proc.poll() is None
        return running
