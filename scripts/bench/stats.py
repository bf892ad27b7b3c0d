"""The one definition of a percentile (and so of a median) that every benchmark figure uses.

Definition: linear interpolation between the two closest ranks, numpy's default
(`np.percentile(values, q)`, method "linear"; R's type 7, Excel's PERCENTILE.INC). For n values
sorted as x[0] <= ... <= x[n-1], the q-th percentile sits at rank h = (n - 1) * q / 100 and is
x[floor(h)] + (h - floor(h)) * (x[floor(h) + 1] - x[floor(h)]). So p0 is the minimum, p100 the
maximum and p50 the median (the mean of the two middle values when n is even, as
`statistics.median`).

Why this one: the recorded figures of the load generator, the reliability runs and the forward
pass in BENCHMARKS.md and RELIABILITY.md are numpy's default, so they keep their meaning. (Nearest
rank and x[int(q * n / 100)] differ from it by less than one rank: for a p99 over 3,000 requests,
under the gap between two neighbouring latencies.) A p99 over fewer than 100 values is
interpolated between the two slowest: read it as "near the maximum".

Empty input: no figure (None), never an error or NaN, so a window in which nothing was answered
shows as empty in a table. A q outside [0, 100] is a ValueError.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

# The figures `summary` reports by default: what the load generator writes for each window.
DEFAULT_FIGURES = ("p50", "p90", "p99", "p99.9", "max", "mean")


def _check(q: float) -> float:
    q = float(q)
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q!r} is not between 0 and 100")
    return q


def _quantile_of(name: str) -> float:
    """The Q of a figure named "pQ": "p99.9" -> 99.9."""
    try:
        if name.startswith("p"):
            return _check(float(name[1:]))
    except ValueError:
        pass
    raise ValueError(f"unknown figure {name!r}: pQ (0 <= Q <= 100), mean, min, max or n")


def _at(ordered: Sequence[float], q: float) -> float:
    """The q-th percentile of values already sorted ascending (at least one)."""
    h = (len(ordered) - 1) * q / 100.0
    lo = math.floor(h)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (h - lo) * (ordered[hi] - ordered[lo])


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0 <= q <= 100) of `values`, linear between closest ranks; None if
    there are none."""
    q = _check(q)
    ordered = sorted(float(v) for v in values)
    return _at(ordered, q) if ordered else None


def median(values: Iterable[float]) -> float | None:
    """percentile(values, 50): the middle value, or the mean of the two middle ones."""
    return percentile(values, 50)


def summary(values: Iterable[float], figures: Sequence[str] = DEFAULT_FIGURES,
            digits: int | None = 2) -> dict[str, float | int | None]:
    """The named figures of `values` in one pass: "pQ" (the Q-th percentile, e.g. "p50",
    "p99.9"), "mean", "min", "max" and "n" (the count), each rounded to `digits` (None: not
    rounded). With no values every figure is None except "n" (0)."""
    ordered = sorted(float(v) for v in values)
    out: dict[str, float | int | None] = {}
    for name in figures:
        if name == "n":
            out[name] = len(ordered)
            continue
        q = None if name in ("mean", "min", "max") else _quantile_of(name)
        if not ordered:
            value = None
        elif name == "mean":
            value = math.fsum(ordered) / len(ordered)
        else:  # min and max are p0 and p100
            value = _at(ordered, 0.0 if name == "min" else 100.0 if name == "max" else q)
        out[name] = value if value is None or digits is None else round(value, digits)
    return out
