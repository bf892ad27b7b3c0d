"""Crafted images just under and just over every input limit (scripts/bench/micro/crafted_images.py):
16-bit, palette and animated PNG, lossless and animated WebP, plain and RLE BMP, a GIF of a
thousand frames, progressive JPEG, thousands of JPEG scans, 6 MB of EXIF.

In-process, each is accepted or refused with its own status and type. Sent to a real server one
at a time, each accepted one costs the workers at most the budget of docs/inputs-and-errors.md
(0.5 s of CPU, 256 MiB) with a margin for a busy machine (3x for CPU, 2x for memory), each
refused one is answered 4xx JSON, and no worker dies; the two costliest sent at once stay
within twice the memory budget."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import psutil
import pytest
import requests

from handler.errors import InputError
from handler.preprocessing import PreprocessConfig, preprocess_bytes
from scripts import repo
from scripts.bench.micro import crafted_images
from tests.support.servers import MODEL

CFG = PreprocessConfig.load(repo.CONFIG_DIR / MODEL / "preprocess.json")
BUDGET_CPU_S, BUDGET_MIB = 0.5, 256  # docs/inputs-and-errors.md, "Per-request cost budget"
# On this shared machine a worker's CPU time for the same image moved up to 4x within a day
# (lossless WebP 12 MP: 0.33 s, then 1.31 s); memory does not stretch like that. The exact
# budget is held in a fresh process by `python -m scripts.bench.micro.request_cost --corpus`.
CPU_MARGIN, MEMORY_MARGIN = 3.0, 2.0


@pytest.fixture(scope="module")
def cases() -> list[crafted_images.Case]:
    return crafted_images.corpus(CFG)


def test_the_corpus_covers_every_costly_kind_on_both_sides(cases):
    names = {c.name for c in cases}
    assert len(cases) >= 20
    for kind in ("png16", "png_palette_transparent", "apng_16_frames", "webp_lossless", "webp_animated",
                 "bmp_1bit", "bmp_rle8", "bmp_rle4", "gif_1000_frames", "jpeg_progressive",
                 "jpeg_baseline", "jpeg_scans", "jpeg_scan_pixels", "bmp_rle_noops"):
        assert {f"{kind}_under", f"{kind}_over"} <= names, kind
    assert all(len(c.data) <= CFG.max_bytes for c in cases)


def test_each_case_in_process(cases):
    for case in cases:
        if case.status == 200:
            shape = tuple(preprocess_bytes(case.data, CFG).shape)
            assert shape == (3, CFG.input_size, CFG.input_size), case.name
        else:
            with pytest.raises(InputError) as err:
                preprocess_bytes(case.data, CFG)
            assert (err.value.status, err.value.error_type) == (case.status, case.error_type), case.name


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


def worker_pids(server) -> list[int]:
    return sorted(int(w["pid"]) for w in server.client.workers(MODEL))


def post(server, data: bytes) -> requests.Response:
    return requests.post(f"{server.client.inference_url}/predictions/{MODEL}", data=data, timeout=60,
                         headers={**server.client.auth_headers("inference"),
                                  "Content-Type": "application/octet-stream"})


@pytest.mark.e2e
def test_each_case_served_within_the_budget_and_no_worker_dies(server, cases):
    pids = worker_pids(server)
    rows = []
    for case in cases:
        with WorkerCost(pids) as cost:
            resp = post(server, case.data)
        rows.append((case.name, resp.status_code, round(cost.cpu_s, 3), round(cost.grew_mib)))
        assert resp.status_code == case.status, (case.name, resp.text[:300])
        if case.status != 200:
            assert resp.json()["type"] == case.error_type, (case.name, resp.text[:300])
        assert cost.cpu_s < CPU_MARGIN * BUDGET_CPU_S, rows[-1]
        assert cost.grew_mib < MEMORY_MARGIN * BUDGET_MIB, rows[-1]
    print("\ncrafted images served (name, status, worker CPU s, peak RSS growth MiB):")
    for row in rows:
        print("  ", row)
    assert worker_pids(server) == pids  # no worker died or was replaced


@pytest.mark.e2e
def test_the_two_costliest_at_once_stay_within_twice_the_budget(server, cases):
    """Two accepted worst cases arriving together may land in one batch of one worker: its
    memory then holds both."""
    by_name = {c.name: c for c in cases}
    pair = [by_name["webp_lossless_under"].data, by_name["png16_under"].data]
    pids = worker_pids(server)
    with WorkerCost(pids) as cost, concurrent.futures.ThreadPoolExecutor(2) as pool:
        statuses = [r.status_code for r in pool.map(lambda d: post(server, d), pair)]
    print(f"\ntwo at once: statuses {statuses}, worker CPU {cost.cpu_s:.2f} s, "
          f"peak RSS growth of one worker {cost.grew_mib:.0f} MiB")
    assert statuses == [200, 200]
    assert cost.grew_mib < MEMORY_MARGIN * 2 * BUDGET_MIB
    assert worker_pids(server) == pids
