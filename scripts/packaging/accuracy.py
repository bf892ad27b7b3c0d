"""Accuracy at packaging (`package --eval-dir DIR`): the packaged artifact and the eager model on
a folder of labelled photos, each photo from its bytes through the served path
(handler.preprocessing.preprocess_bytes with the staged preprocess.json), top-1 and top-5 with
Wilson 95% intervals. The artifact's figure is what the server will answer; the eager model's,
through the same preprocessing, is the research model's, and their difference is the export's
own cost. `--expect-top1 X` (the figure the research team measured) refuses the archive when X
lies outside the artifact's interval: a preprocessing that differs from the one the labels and
the figure were made with (BGR for RGB, another resize) shows there, even when the artifact
and the eager model agree with each other.
"""

from __future__ import annotations

import torch
from torch import nn

from handler.errors import InputError
from handler.preprocessing import PreprocessConfig, preprocess_bytes
from handler.runner import Runner
from scripts.ops.labelled import PhotoFolder, Progress, Tally, chunks, describe_figures

# Photos per forward pass: the set streams through in pieces, whatever its size.
CHUNK = 16


class AccuracyError(RuntimeError):
    """The accuracy measured at packaging refuses the archive, or cannot be measured."""


def measure(runner: Runner, model: nn.Module, cfg: PreprocessConfig, folder: PhotoFolder) -> dict:
    """Top-1/top-5 of the artifact (`runner`) and of the eager `model` on the folder's labelled
    photos, with the set's description (its content hash, so the figure names its photos)."""
    served, eager = Tally(), Tally()
    items = folder.labelled()
    progress = Progress(len(items), "accuracy")
    for chunk in chunks(items, CHUNK):
        batch = torch.stack([_tensor(folder, name, data, cfg) for name, data, _ in chunk])
        with torch.inference_mode():
            ranked = {"served": _ranked(runner(batch)), "eager": _ranked(model.eval()(batch))}
        for row, (_, _, label) in enumerate(chunk):
            served.add(ranked["served"][row], label)
            eager.add(ranked["eager"][row], label)
        progress.step(len(chunk))
    figures = {"set": folder.describe(), "served": served.figures(), "eager": eager.figures()}
    print(f"[accuracy] {describe_figures('packaged', figures['served'])}; "
          f"{describe_figures('eager', figures['eager'])}; {progress.rate()} photos/s", flush=True)
    return figures


def check_expected(figures: dict, expected: float) -> None:
    """Raise AccuracyError when `expected` lies outside the packaged artifact's top-1 interval."""
    served = figures["served"]
    low, high = served["top1_ci95"]
    if not low <= expected <= high:
        raise AccuracyError(
            f"--expect-top1 {expected} lies outside the packaged model's top-1 {served['top1']:.4f} "
            f"[{low:.3f}, {high:.3f}] on {served['n']} photos of {figures['set']['folder']}: the "
            "served preprocessing or weights differ from those that figure was measured with; "
            "nothing archived")


def _tensor(folder: PhotoFolder, name: str, data: bytes, cfg: PreprocessConfig) -> torch.Tensor:
    try:
        return preprocess_bytes(data, cfg)
    except InputError as exc:
        raise AccuracyError(f"{folder.folder / name}: {exc.message}") from exc


def _ranked(logits: torch.Tensor) -> list[list[int]]:
    return torch.topk(logits.float(), min(5, logits.shape[1]), dim=1).indices.tolist()
