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
    """Window lengths (s) of one run; --quick shortens them."""
    repeats: int = 2
    low: float = 15       # p50 at 10 rps
    target: float = 60    # p99 at 50 rps
    step: float = 6       # each sweep rate
    sat: float = 15       # closed-loop saturation
    sweep: str = "5,10:150:10"  # 5 rps: where the stock handler can still meet the SLO



QUICK = Profile(repeats=1, low=8, target=15, step=5, sat=10, sweep="5,10:150:20")
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
