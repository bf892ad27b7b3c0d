"""Running the handler in-process: a TorchServe context for `initialize` and `handle`, in the style
of TorchServe's own handler unit tests (ts/torch_handler/unit_tests): the real `ts.context.Context`
over an unpacked archive, with metrics recorded instead of sent, and what the tests read back.
(TorchServe's own MockContext has no per-request state: no request ids, headers or statuses.)"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import yaml
from ts.context import Context, RequestProcessor

from handler import layout


class RecordingMetrics:
    """Stands in for TorchServe's metrics cache: keeps every metric the handler emits."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    def add_metric(self, name: str, value: float, unit: str, dimensions=None, metric_type=None) -> None:
        self.calls.append((name, value))

    def add_time(self, name: str, value: float, idx=None, unit: str = "ms") -> None:
        self.calls.append((name, value))

    def names(self) -> set[str]:
        return {name for name, _ in self.calls}


def make_context(model_dir: Path, batch_size: int = 4, gpu_id: int | None = None,
                 model_yaml: dict | None = None) -> Context:
    """The context TorchServe's worker would hand `initialize` for this model directory; with
    `gpu_id`, as on a server with GPUs (TorchServe sets system_properties['gpu_id'])."""
    manifest = json.loads((model_dir / layout.ARCHIVER_MANIFEST).read_text())
    if model_yaml is None:
        model_yaml = yaml.safe_load((model_dir / layout.MODEL_CONFIG).read_text())
    ctx = Context(manifest["model"]["modelName"], str(model_dir), manifest, batch_size, gpu_id,
                  "0.12.0", metrics=RecordingMetrics(), model_yaml_config=model_yaml)
    new_batch(ctx, batch_size)
    return ctx


def new_batch(ctx: Context, size: int, headers: list[dict] | None = None) -> Context:
    """Fresh per-request state (status, response headers) for a batch of `size` requests, as
    TorchServe's worker sets before each call of handle()."""
    ctx.request_processor = [RequestProcessor((headers or [{}] * size)[i]) for i in range(size)]
    return ctx


def unpack(mar: Path, out: Path) -> Path:
    """Unzip an archive the way TorchServe does before loading it; returns the model dir."""
    with zipfile.ZipFile(mar) as zf:
        zf.extractall(out)
    return out


def statuses(ctx: Context) -> dict[int, tuple[int, str]]:
    """{request index: (status, phrase)} of the requests whose status the handler set."""
    return {i: (rp.get_response_status_code(), rp.get_response_status_phrase())
            for i, rp in enumerate(ctx.request_processor) if rp.get_response_status_code() != 200}
