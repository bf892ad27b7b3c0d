"""The benchmark's workspace (build/bench/), its window lengths and its sample photos."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from scripts import repo
from scripts.packaging.sample_photos import write_photos

BENCH = repo.BUILD_DIR / "bench"
STORE = BENCH / "store"
PHOTOS = BENCH / "photos"
CFG_DIR = repo.CONFIG_DIR / repo.DEFAULT_MODEL


@dataclass
class Profile:
    """Window lengths (s) of one run; --quick shortens them. Every window follows its own
    warm-up, so "highest rate under the SLO" is a capacity, not the first seconds' transient."""
    repeats: int = 2
    low: float = 15       # p50 at 10 rps
    target: float = 60    # p99 and p99.9 at 50 rps
    step: float = 30      # each sweep rate
    sat: float = 15       # closed-loop saturation
    warmup: float = 5     # before every open-loop window and every sweep step
    # 10 rps first: where the stock handler can still meet the SLO; a sweep stops after two
    # rates in a row miss the SLO (the capacity is found) or cannot be sustained.
    sweep: str = "10,30:120:10"
    # Windows per sweep rate and per saturation, interleaved across services: a rate passes on
    # its median window's p99 (scripts/bench/load/main.py capacity_windows).
    windows: int = 3


# The quick profile measures each rate in one window: its capacities are single windows.
QUICK = Profile(repeats=1, low=8, target=15, step=7, sat=10, warmup=3, sweep="10,30:120:20", windows=1)
LEVERS = Profile(repeats=2, low=6, target=0, step=0, sat=8)  # one lever = many servers x windows


def log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)



def photos() -> Path:
    """The sample photos as JPEG files, written once. Written into a fresh folder and renamed
    into place, so a process that finds the folder finds it complete (parallel workers read it)."""
    if not PHOTOS.is_dir():
        PHOTOS.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".photos-", dir=PHOTOS.parent))
        write_photos(tmp, ("jpg",))
        try:
            tmp.rename(PHOTOS)
        except OSError:  # another process renamed its copy first
            shutil.rmtree(tmp, ignore_errors=True)
    return PHOTOS
