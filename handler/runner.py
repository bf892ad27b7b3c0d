"""Inference runners: a batch tensor in, logits out. One interface, four backends.

The backend follows the artifact: `.pt`/`.ts` is TorchScript (torch.jit.load), `.onnx` runs
on ONNX Runtime, `.pt2` is a torch.export program, `.pth` is a state dict for the eager model
built from the archive's architecture file (`model.py`, class and kwargs in architecture.json).
All are pinned to `threads` intra-op threads so that workers x threads
never exceeds the cores. The device and dtype come from a `Placement` (handler/device.py):
the CPU in FP32 unless TorchServe assigned this worker a GPU. Inputs arrive and logits
leave as FP32 CPU tensors whatever the placement, so the rest of the handler never changes.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from handler import layout
from handler.device import ON_CPU, Placement
from handler.model_code import import_file, import_module

BACKENDS = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript", ".pt2": "torch-export",
            ".pth": "eager"}


class TorchScriptRunner:
    backend = "torchscript"

    def __init__(self, path: str | Path, threads: int, placement: Placement = ON_CPU) -> None:
        self.device = torch.device(placement.device)
        # Reduced precision through autocast, as the export validated it (scripts/packaging/precision.py):
        # the frozen graph's weights stay FP32 constants; matmuls and convolutions run in the
        # lower precision, softmax and normalisations in FP32.
        self.autocast = placement.dtype != "float32"
        self.dtype = getattr(torch, placement.dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still supported
            self.model = torch.jit.load(str(path), map_location=self.device).eval()

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":  # pinned host memory: the copy to the GPU can overlap
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.autocast):
            logits = self.model(batch)
        return logits.float().cpu() if self.autocast or self.device.type != "cpu" else logits


class OnnxRunner:
    backend = "onnx"

    def __init__(self, path: str | Path, threads: int, placement: Placement = ON_CPU) -> None:
        import onnxruntime as ort  # only needed when the artifact is ONNX

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=list(placement.providers))
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run(None, {self.input_name: batch.numpy().astype(np.float32)})
        return torch.from_numpy(logits)


class ModuleRunner:
    """A torch nn.Module on the CPU in FP32: the eager model or a torch.export program's."""

    def __init__(self, model: torch.nn.Module, backend: str) -> None:
        self.model = model
        self.backend = backend

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(batch).float()


def eager_model(weights: Path, compile_model: bool = False) -> torch.nn.Module:
    """The architecture file's class (or the code folder's module's: architecture.json's
    "module", imported by name from the model directory), built with architecture.json's
    kwargs, the state dict loaded with weights_only=True (no code runs from the weights file)."""
    model_dir = weights.parent
    record = json.loads((model_dir / layout.ARCHITECTURE).read_text())
    module = (import_module(record["module"]) if record.get("module")
              else import_file(model_dir / layout.MODEL_FILE, "archived_model_file"))
    model = getattr(module, record["class"])(**record.get("kwargs", {}))
    model.load_state_dict(torch.load(str(weights), map_location="cpu", weights_only=True), strict=True)
    model.eval()
    return torch.compile(model) if compile_model else model


def exported_model(path: Path) -> torch.nn.Module:
    return torch.export.load(str(path)).module()


def backend_of(path: str | Path) -> str:
    """The backend of an artifact, from its file extension."""
    suffix = Path(path).suffix.lower()
    if suffix not in BACKENDS:
        raise ValueError(f"Unknown model artifact type {suffix!r}: expected one of {sorted(BACKENDS)}")
    return BACKENDS[suffix]


Runner = TorchScriptRunner | OnnxRunner | ModuleRunner


def load_runner(path: str | Path, threads: int = 1, placement: Placement = ON_CPU,
                compile_model: bool = False) -> Runner:
    """The runner for the artifact's backend, on the placement's device and dtype
    (`compile_model`: torch.compile the eager model at load)."""
    # torch runs the handler's own tensor ops (stack, softmax) with either backend: left at its
    # default, its OpenMP threads spin on the cores the other workers need.
    torch.set_num_threads(threads)
    backend = backend_of(path)
    if backend == "onnx":
        return OnnxRunner(path, threads, placement)
    if backend == "eager":
        return ModuleRunner(eager_model(Path(path), compile_model), backend)
    if backend == "torch-export":
        return ModuleRunner(exported_model(Path(path)), backend)
    return TorchScriptRunner(path, threads, placement)
