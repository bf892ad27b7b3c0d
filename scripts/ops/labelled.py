"""Labelled photo folders and the accuracy figures measured on them, one definition for the
build (packaging's --eval-dir, the INT8 guard) and for the running server (scripts.ops.evaluate).

A folder holds photos and `LABELS.tsv` beside them: one line per photo, `file<TAB>class index`
(a header line, or any line whose second cell is not a number, is skipped). Standard library
only: the runtime image evaluates a live server with it.
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

LABELS_FILE = "LABELS.tsv"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


class LabelledSetError(ValueError):
    """A folder that is not a set of photos to evaluate on."""


@dataclass(frozen=True)
class PhotoFolder:
    """Photos of a folder (file name -> encoded bytes) and their labels from LABELS.tsv."""

    folder: Path
    photos: dict[str, bytes]
    labels: dict[str, int]

    def describe(self) -> dict:
        digest = hashlib.sha256("".join(sorted(hashlib.sha256(b).hexdigest()
                                                for b in self.photos.values())).encode()).hexdigest()
        return {"folder": str(self.folder), "photos": len(self.photos), "labelled": len(self.labels),
                "content_sha256": digest}

    def labelled(self) -> list[tuple[str, bytes, int]]:
        """(file name, bytes, class index) of every labelled photo, sorted by name."""
        return [(name, self.photos[name], self.labels[name]) for name in sorted(self.labels)]


def photo_folder(path: str | Path) -> PhotoFolder:
    """The images of a folder (sorted by name) and LABELS.tsv's labels for them, if present."""
    folder = Path(path)
    if not folder.is_dir():
        raise LabelledSetError(f"{folder} is not a folder of photos")
    photos = {f.name: f.read_bytes() for f in sorted(folder.iterdir())
              if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES}
    if not photos:
        raise LabelledSetError(f"{folder} holds no photos ({', '.join(IMAGE_SUFFIXES)})")
    labels = {}
    if (folder / LABELS_FILE).is_file():
        for line in (folder / LABELS_FILE).read_text().splitlines():
            cells = line.split("\t")
            if len(cells) >= 2 and cells[0] in photos and cells[1].strip().isdigit():
                labels[cells[0]] = int(cells[1])
    return PhotoFolder(folder, photos, labels)


def labelled_folder(path: str | Path) -> PhotoFolder:
    """photo_folder, which must hold at least one labelled photo (to measure accuracy on)."""
    found = photo_folder(path)
    if not found.labels:
        raise LabelledSetError(f"{found.folder} has no {LABELS_FILE} naming its photos (file<TAB>class "
                               "index per line): accuracy needs labels")
    return found


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    """Wilson score 95% interval for k successes of n."""
    p, d = k / n, 1 + z * z / n
    c, h = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [round(max(0.0, c - h), 3), round(min(1.0, c + h), 3)]


@dataclass
class Tally:
    """Top-1 and top-5 hits of one model on labelled photos."""

    n: int = 0
    top1: int = 0
    top5: int = 0

    def add(self, ranked: Sequence[int], label: int) -> None:
        """One photo: `ranked` the class indices best first (at least 5 for top-5)."""
        self.n += 1
        self.top1 += int(len(ranked) > 0 and ranked[0] == label)
        self.top5 += int(label in list(ranked)[:5])

    def figures(self) -> dict:
        """n, top-1 and top-5 with their Wilson 95% intervals."""
        if not self.n:
            return {"n": 0}
        return {"n": self.n, "top1": round(self.top1 / self.n, 4), "top1_ci95": wilson(self.top1, self.n),
                "top5": round(self.top5 / self.n, 4), "top5_ci95": wilson(self.top5, self.n)}


def describe_figures(label: str, figures: dict) -> str:
    """One line: `label` top-1 x [lo, hi], top-5 y [lo, hi] (n=N)."""
    if not figures.get("n"):
        return f"{label}: no labelled photo answered"
    lo1, hi1 = figures["top1_ci95"]
    lo5, hi5 = figures["top5_ci95"]
    return (f"{label}: top-1 {figures['top1']:.4f} [{lo1:.3f}, {hi1:.3f}], top-5 {figures['top5']:.4f} "
            f"[{lo5:.3f}, {hi5:.3f}] (n={figures['n']})")


@dataclass
class Progress:
    """Photos done of a total, with their rate and the time left, on stderr every `every` s."""

    total: int
    label: str = "evaluating"
    every: float = 2.0
    done: int = 0
    start: float = field(default_factory=time.perf_counter)
    shown: float = 0.0

    def step(self, count: int = 1) -> None:
        self.done += count
        now = time.perf_counter()
        if now - self.shown >= self.every or self.done >= self.total:
            self.shown = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / max(rate, 1e-9)
            print(f"  {self.label}: {self.done}/{self.total} photos, {rate:.1f} photos/s, "
                  f"ETA {eta:.0f} s", file=sys.stderr, flush=True)

    def rate(self) -> float:
        return round(self.done / max(time.perf_counter() - self.start, 1e-9), 1)


def chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
