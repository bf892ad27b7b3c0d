"""What a block of requests cost a server's workers: CPU seconds and peak RSS growth."""

from __future__ import annotations

import threading
import time

import psutil


class WorkerCost:
    """CPU seconds the workers spent and their peak RSS growth (MiB, any one worker) while a
    block ran; RSS sampled every 2 ms."""

    def __init__(self, pids: list[int]) -> None:
        self.procs = [psutil.Process(p) for p in pids]

    def __enter__(self) -> WorkerCost:
        self.rss0 = [p.memory_info().rss for p in self.procs]
        self.peak = list(self.rss0)
        self.cpu0 = sum(sum(p.cpu_times()[:2]) for p in self.procs)
        self.done = threading.Event()
        self.sampler = threading.Thread(target=self._sample, daemon=True)
        self.sampler.start()
        return self

    def _sample(self) -> None:
        while not self.done.wait(0.002):
            for i, p in enumerate(self.procs):
                self.peak[i] = max(self.peak[i], p.memory_info().rss)

    def __exit__(self, *exc) -> None:
        time.sleep(0.05)  # the worker's last samples after it answered
        self.done.set()
        self.sampler.join()
        self.cpu_s = sum(sum(p.cpu_times()[:2]) for p in self.procs) - self.cpu0
        self.grew_mib = max(b - a for a, b in zip(self.rss0, self.peak)) / 2**20
        self.rss_after_mib = max(p.memory_info().rss for p in self.procs) / 2**20
