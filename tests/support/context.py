"""Running the handler in-process: the mock TorchServe context (scripts/bench/micro/mock_context.py,
shared with the GPU benchmark) over an unpacked archive, and what the tests read back."""

from __future__ import annotations

import zipfile
from pathlib import Path

from ts.context import Context

from scripts.bench.micro.mock_context import RecordingMetrics, make_context, new_batch

__all__ = ["RecordingMetrics", "make_context", "new_batch", "statuses", "unpack"]


def unpack(mar: Path, out: Path) -> Path:
    """Unzip an archive the way TorchServe does before loading it; returns the model dir."""
    with zipfile.ZipFile(mar) as zf:
        zf.extractall(out)
    return out


def statuses(ctx: Context) -> dict[int, tuple[int, str]]:
    """{request index: (status, phrase)} of the requests whose status the handler set."""
    return {i: (rp.get_response_status_code(), rp.get_response_status_phrase())
            for i, rp in enumerate(ctx.request_processor) if rp.get_response_status_code() != 200}
