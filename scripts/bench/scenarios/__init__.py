"""Scenario runs against real servers (READY, overload, soak, slow clients, the balanced pair,
worker kills) for RELIABILITY.md; `finish` is the last step of the CLIs that report problems."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence


def finish(figures: dict, problems: Sequence[str], report: Callable[[dict], str], as_json: bool) -> int:
    """A scenario CLI's last step: print `figures` as JSON (`as_json`) or as `report(figures)`,
    then one `FAIL: <problem>` line per problem; return the exit status, 1 if any problem else 0."""
    print(json.dumps(figures, indent=2) if as_json else report(figures))
    for line in problems:
        print(f"FAIL: {line}")
    return 1 if problems else 0
