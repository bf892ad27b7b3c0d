"""Inference runners: a batch tensor in, logits out. One interface, two backends.

The backend follows the artifact: `.pt`/`.ts` is TorchScript (torch.jit.load), `.onnx` runs
on ONNX Runtime. Both are pinned to `threads` intra-op threads so that workers x threads
never exceeds the cores.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch


class TorchScriptRunner:
    backend = "torchscript"

    def __init__(self, path: str | Path, threads: int) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still supported
            self.model = torch.jit.load(str(path), map_location="cpu").eval()

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(batch)


class OnnxRunner:
    backend = "onnx"

    def __init__(self, path: str | Path, threads: int) -> None:
        import onnxruntime as ort  # only needed when the artifact is ONNX

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run(None, {self.input_name: batch.numpy().astype(np.float32)})
        return torch.from_numpy(logits)


def load_runner(path: str | Path, threads: int = 1) -> TorchScriptRunner | OnnxRunner:
    """Pick the backend from the artifact's file extension."""
    # torch runs the handler's own tensor ops (stack, softmax) with either backend: left at its
    # default, its OpenMP threads spin on the cores the other workers need.
    torch.set_num_threads(threads)
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        return OnnxRunner(path, threads)
    if suffix in (".pt", ".ts", ".pth"):
        return TorchScriptRunner(path, threads)
    raise ValueError(f"Unknown model artifact type {suffix!r}: expected .pt (TorchScript) or .onnx")
