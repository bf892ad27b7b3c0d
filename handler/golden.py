"""Golden answers: the packaged artifact's own answers to a few photos, replayed by every worker.

Packaging stores in the archive (layout.GOLDEN_DIR, hashed like every file) a few photos and the
exact top-k class indices and probabilities the packaged artifact gave them through the served
path (`record`). Every worker replays them after loading its model, before it reports READY
(`replay`): the same bytes through this machine's decoder, preprocessing and runtime. File hashes
prove the files are the validated ones; this proves this environment (Pillow and its libjpeg,
ONNX Runtime or torch, the CPU's kernels, the handler's settings) still gives the validated
answers. A top-1 that differs, or a probability further than the format's tolerance from the
recorded one, refuses the load with one line: the photo, the expected and found answers, and
what in the environment differs from the export's. An archive without golden answers (built
before they were recorded) loads, and its worker says so in the log.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch

from handler import layout, provenance
from handler.head import SOFTMAX, Head, answer_probabilities, views_of
from handler.preprocessing import PreprocessConfig, preprocess_bytes
from handler.settings import HANDLER_ENV, inside

logger = logging.getLogger(__name__)

# Largest |probability difference| at a recorded class. The same artifact on the same libraries
# gave identical probabilities across thread counts and batch sizes here, and ONNX Runtime's
# graph optimisation levels moved them by at most 8e-7: 1e-4 leaves room for another CPU's
# kernels and still refuses a change a client could see (answers carry 6 decimals). The INT8
# graph's requantisation steps make it 10x more sensitive to kernel choice.
TOLERANCE = {"onnx": 1e-4, "torchscript": 1e-4, "torch-export": 1e-4, "eager": 1e-4, "onnx-int8": 1e-3}
TOP_K = 5


class GoldenMismatch(RuntimeError):
    """This worker's answer to a golden photo is not the one recorded at packaging."""


def answer(runner, cfg: PreprocessConfig, data: bytes, model_head: Head = SOFTMAX) -> torch.Tensor:
    """The probabilities a client gets for one photo's bytes, through the served path: the
    archive's head, its views (test-time augmentation) averaged."""
    batch = preprocess_bytes(data, cfg).unsqueeze(0)
    rows = views_of(batch)[0].shape[0]
    return answer_probabilities(runner, batch, model_head, rows)[0][0]


def record(runner, cfg: PreprocessConfig, photos: dict[str, bytes], fmt: str,
           model_head: Head = SOFTMAX) -> dict:
    """The answers document for `photos` (archive path -> bytes): top-k indices and probabilities."""
    answers = {}
    for name, data in sorted(photos.items()):
        probs = answer(runner, cfg, data, model_head)
        best = probs.topk(min(TOP_K, probs.shape[0]))
        answers[name] = {"indices": best.indices.tolist(), "probabilities": best.values.tolist()}
    return {"format": fmt, "tolerance": TOLERANCE[fmt], "photos": answers}


def replay(model_dir: Path, runner, cfg: PreprocessConfig, manifest: dict,
           model_head: Head = SOFTMAX) -> float | None:
    """Replay the archive's golden answers; the seconds it took, None without golden answers.
    Raises GoldenMismatch naming the first photo whose answer differs."""
    path = Path(model_dir) / layout.GOLDEN_ANSWERS
    if not path.is_file():
        logger.warning("No golden answers in this archive (%s; built before they were recorded): "
                       "its answers on this machine are not checked at load", layout.GOLDEN_ANSWERS)
        return None
    start = time.perf_counter()
    doc = json.loads(path.read_text())
    for name, expected in doc["photos"].items():
        data = inside(model_dir, name, f"{layout.GOLDEN_ANSWERS} (photo)").read_bytes()
        problem = difference(expected, answer(runner, cfg, data, model_head), float(doc["tolerance"]))
        if problem:
            changed = provenance.environment_differences(manifest) + [
                f"{var}={os.environ[var]} set" for var in HANDLER_ENV if var in os.environ]
            message = (f"Golden answer for {name} differs: {problem}; environment vs the export's: "
                       f"{'; '.join(changed) or 'no recorded difference'} (the model is not loaded)")
            logger.error(message)
            raise GoldenMismatch(message)
    seconds = time.perf_counter() - start
    logger.info("Golden answers: %d photos match (tolerance %g) in %.3f s", len(doc["photos"]),
                doc["tolerance"], seconds)
    return seconds


def difference(expected: dict, probs: torch.Tensor, tolerance: float) -> str | None:
    """Why `probs` is not the `expected` answer, or None when it is."""
    indices, wanted = expected["indices"], expected["probabilities"]
    found = [float(probs[i]) for i in indices]
    top1 = int(probs.argmax())
    worst = max(abs(a - b) for a, b in zip(found, wanted, strict=True))
    if top1 == indices[0] and worst <= tolerance:
        return None
    return (f"expected top-1 {indices[0]} (p={wanted[0]:.6f}), found top-1 {top1} "
            f"(p={float(probs[top1]):.6f}); largest probability difference at a recorded class "
            f"{worst:.2e} (tolerance {tolerance:g})")
