"""Reduced-precision check at export: the eager model in FP32 against itself under autocast.

A worker on a GPU runs a TorchScript archive in a reduced precision only when this check
passed and its result is in the archive's manifest (`validation.reduced_precision`;
handler/device.py reads it). Autocast, as the runner uses it: matmuls and convolutions in the
lower precision, softmax and normalisations in FP32.

Candidates in order of preference: float16 (10-bit mantissa: on EfficientNet-Lite0's photos
30x closer to FP32 than bfloat16) then bfloat16 (8-bit mantissa, but FP32's exponent range: no
overflow where activations pass 65,504). Current GPUs run both at the same rate. The
thresholds say what a client could notice: no validation photo may change its top-1 class,
and no class probability may move by more than 2 percentage points.
"""

from __future__ import annotations

import torch
from torch import nn

CANDIDATES = ("float16", "bfloat16")
MAX_ABS_PROB_DIFF = 0.02
MIN_TOP1_AGREEMENT = 1.0


@torch.inference_mode()
def check(model: nn.Module, batch: torch.Tensor, dtype: str = "bfloat16", device: str = "cpu") -> dict:
    """Compare `model(batch)` in FP32 with the same under autocast to `dtype` on `device`."""
    model = model.eval().to(device)
    batch = batch.to(device)
    reference = model(batch).float()
    with torch.autocast(torch.device(device).type, dtype=getattr(torch, dtype)):
        reduced = model(batch).float()
    p_ref, p_low = reference.softmax(1), reduced.softmax(1)
    k = min(5, reference.shape[1])
    top_ref, top_low = reference.topk(k, 1).indices, reduced.topk(k, 1).indices
    overlap = torch.tensor([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(top_ref, top_low)])
    agreement = (reference.argmax(1) == reduced.argmax(1)).float().mean().item()
    prob_diff = (p_ref - p_low).abs().max().item()
    return {
        "dtype": dtype,
        "device": torch.device(device).type,
        "images": int(batch.shape[0]),
        "top1_agreement": round(agreement, 6),
        "top5_overlap": round(overlap.mean().item(), 6),
        "max_abs_prob_diff": round(prob_diff, 6),
        "thresholds": {"top1_agreement": MIN_TOP1_AGREEMENT, "max_abs_prob_diff": MAX_ABS_PROB_DIFF},
        "passed": agreement >= MIN_TOP1_AGREEMENT and prob_diff <= MAX_ABS_PROB_DIFF,
    }


def select(model: nn.Module, batch: torch.Tensor, device: str = "cpu",
           candidates: tuple[str, ...] = CANDIDATES) -> dict:
    """The first candidate that passes (its report, with every candidate's under `candidates`);
    `passed: False` and dtype None when none does: the archive then runs FP32 everywhere."""
    reports = [check(model, batch, dtype, device) for dtype in candidates]
    chosen = next((r for r in reports if r["passed"]), None)
    summary = dict(chosen) if chosen else {"dtype": None, "passed": False}
    summary["candidates"] = {r["dtype"]: {k: r[k] for k in ("top1_agreement", "top5_overlap",
                                                             "max_abs_prob_diff", "passed")}
                             for r in reports}
    return summary
