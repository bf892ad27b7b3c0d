"""INT8 export: static quantization of the fused FP32 graph, and the accuracy guard that must
pass before an INT8 archive is packaged.

Quantization: ONNX Runtime's `quant_pre_process` (shape inference, graph clean-up) then
`quantize_static` in QDQ format, per-channel int8 weights, uint8 activations, activation ranges
calibrated (MinMax) on real photos through the served preprocessing; the first convolution and
the classifier stay FP32 (fp32_nodes).

Guard, on photos disjoint in SOURCE PHOTO from the calibration set:
- top-1 agreement with the FP32 graph and mean top-5 overlap, on an evaluation set of many views
  (crops, flips, scales) of a few distinct real photos: the views of one photo are correlated,
  so the set is worth fewer independent images than its size;
- top-1 on the labelled ImageNet photos foolbox ships (20), FP32 and INT8, with a Wilson 95%
  interval: recorded, not gated (20 photos cannot tell a one-point change apart).
Calibration: the export's sample photos (scikit-image, scikit-learn) and two more scikit-image
photos. Evaluation: foolbox's 20 ImageNet photos and matplotlib's grace_hopper.jpg. These small
sets are the default; real ones are folders of photos given to the export (`--calibration-dir`,
`--eval-dir`; `LABELS.tsv` beside the photos: file, class index), disjoint by content, each photo
once through the served path from its bytes, so every evaluation photo is independent.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from handler.errors import InputError
from handler.preprocessing import PreprocessConfig, preprocess_bytes, to_tensor
from scripts.ops.labelled import LABELS_FILE, LabelledSetError, PhotoFolder, wilson
from scripts.ops.labelled import photo_folder as read_folder

# The guard's defaults, overridden by the model config's `export: int8_guard:` block.
GUARD_DEFAULTS = {
    # >= 0.97: EfficientNet-Lite's published INT8 loss is 0.7 points of top-1 (75.1 -> 74.4);
    # agreement 0.97 lets at most 3% of FP32's answers change, so at worst a 3-point loss, and
    # ORT's QDQ quantization of this model measured 0.982 on 980 real labelled photos.
    "min_top1_agreement": 0.97,
    # Mean |top-5 INT8 ∩ top-5 FP32| / 5: the rest of the served top-5 must hold too.
    "min_top5_overlap": 0.90,
    # Independent photos: the views of one photo count once. Fewer cannot tell 0.97 from 0.93
    # (at 300, agreement 0.97 has a 95% interval of about +-0.02); the built-in set's 21 photos
    # are for tests, so a real INT8 archive needs --eval-dir.
    "min_eval_photos": 300,
    "eval_views_per_photo": 25,
    "calibration_views_per_photo": 8,
}


class GuardError(RuntimeError):
    """The INT8 graph fails its accuracy guard: it must not be packaged."""


# The folder reader and the interval live in scripts.ops.labelled (a live server's evaluation
# uses them too); the guard's tests and callers reach them here as well.
__all__ = ["LABELS_FILE", "GuardError", "photo_folder", "wilson"]


def photo_folder(path: str | Path) -> PhotoFolder:
    """scripts.ops.labelled.photo_folder (the one reader of LABELS.tsv), its errors the guard's."""
    try:
        return read_folder(path)
    except LabelledSetError as exc:
        raise GuardError(str(exc)) from exc


def guard_settings(given: dict | None) -> dict:
    """GUARD_DEFAULTS updated by `given`; an unknown key is an error, not a silent default."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(GUARD_DEFAULTS))
    if unknown:
        raise GuardError(f"export.int8_guard: unknown key(s) {unknown}; known: {sorted(GUARD_DEFAULTS)}")
    return {**GUARD_DEFAULTS, **given}


def check_disjoint(calibration: PhotoFolder, evaluation: PhotoFolder) -> None:
    """No photo (by content) may be in both: the guard must judge photos it did not calibrate on."""
    seen = {hashlib.sha256(data).hexdigest(): name for name, data in calibration.photos.items()}
    for name, data in evaluation.photos.items():
        if (twin := seen.get(hashlib.sha256(data).hexdigest())) is not None:
            raise GuardError(f"{evaluation.folder / name} is also in the calibration set "
                             f"({calibration.folder / twin}): the sets must be disjoint")


def folder_batch(photos: PhotoFolder, cfg: PreprocessConfig) -> np.ndarray:
    """Each photo once, through the served path from its bytes, as one NCHW float32 array."""
    tensors = []
    for name, data in photos.photos.items():
        try:
            tensors.append(preprocess_bytes(data, cfg).numpy())
        except InputError as exc:
            raise GuardError(f"{photos.folder / name}: {exc.message}") from exc
    return np.stack(tensors).astype(np.float32)


def views(img: Image.Image, n: int, seed: int) -> list[Image.Image]:
    """The photo itself, then n-1 deterministic random crops (30-100% of the area, aspect
    3/4-4/3), half of them mirrored: what a camera pointed at the same scene might give."""
    rng = random.Random(seed)
    out = [img]
    w, h = img.size
    while len(out) < n:
        area = rng.uniform(0.3, 1.0) * w * h
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = min(w, int(round(math.sqrt(area * aspect)))), min(h, int(round(math.sqrt(area / aspect))))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        crop = img.crop((x, y, x + cw, y + ch))
        out.append(ImageOps.mirror(crop) if rng.random() < 0.5 else crop)
    return out


def calibration_photos() -> dict[str, Image.Image]:
    from skimage import data

    from scripts.packaging.sample_photos import load_photos

    arrays = {**load_photos(), "hubble": data.hubble_deep_field(),
              "immunohistochemistry": data.immunohistochemistry()}
    return {name: Image.fromarray(a).convert("RGB") for name, a in arrays.items()}


def labelled_photos() -> list[tuple[str, int, Image.Image]]:
    """foolbox's 20 ImageNet photos: (file name, ImageNet class from the name, image)."""
    import importlib.util

    # Located, not imported: foolbox itself needs eagerpy and more; only its data files are used.
    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        raise GuardError("the foolbox package (requirements-build.txt) is not installed")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    found = []
    for path in sorted(folder.glob("imagenet_*.jpg")):
        label = int(re.fullmatch(r"imagenet_\d+_(\d+)\.jpg", path.name).group(1))
        found.append((path.name, label, Image.open(path).convert("RGB")))
    if len(found) != 20:
        raise GuardError(f"expected foolbox's 20 labelled ImageNet photos in {folder}, found {len(found)}")
    return found


def evaluation_photos() -> dict[str, Image.Image]:
    import matplotlib.cbook

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        hopper = Image.open(f).convert("RGB")
    return {**{name: img for name, _, img in labelled_photos()}, "grace_hopper.jpg": hopper}


def batch_of(photos: dict[str, Image.Image], per_photo: int, cfg: PreprocessConfig) -> np.ndarray:
    """Every view of every photo through the served preprocessing, as one NCHW float32 array."""
    tensors = [to_tensor(v, cfg).numpy() for i, img in enumerate(photos.values())
               for v in views(img, per_photo, seed=i)]
    return np.stack(tensors).astype(np.float32)


def calibration_batch(cfg: PreprocessConfig, per_photo: int = GUARD_DEFAULTS["calibration_views_per_photo"]
                      ) -> np.ndarray:
    return batch_of(calibration_photos(), per_photo, cfg)


@dataclass
class _Reader:
    """quantize_static's CalibrationDataReader: one image at a time."""

    batch: np.ndarray
    input_name: str = "input"
    i: int = 0

    def get_next(self) -> dict | None:
        if self.i >= len(self.batch):
            return None
        self.i += 1
        return {self.input_name: self.batch[self.i - 1:self.i]}

    def rewind(self) -> None:
        self.i = 0


def quantize(fp32: Path, out: Path, calibration: np.ndarray) -> Path:
    """Static QDQ INT8 of `fp32` into `out`, activation ranges from `calibration`."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(_Reader, CalibrationDataReader):
        pass

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre))
        quantize_static(str(pre), str(out), Reader(calibration), quant_format=QuantFormat.QDQ,
                        per_channel=True, weight_type=QuantType.QInt8,
                        activation_type=QuantType.QUInt8, nodes_to_exclude=fp32_nodes(pre))
    return out


def fp32_nodes(path: Path) -> list[str]:
    """The first convolution and the classifier stay FP32: 3 input channels and the logits are
    where int8 loses most and saves least (measured: top-5 overlap 0.82 -> 0.86, 168 views)."""
    import onnx

    nodes = onnx.load(str(path)).graph.node
    first_conv = next(n.name for n in nodes if n.op_type == "Conv")
    return [first_conv, *(n.name for n in nodes if n.op_type == "Gemm")]


def _logits(path: Path, batch: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"input": batch[i:i + 16]})[0]
                           for i in range(0, len(batch), 16)])


def evaluate(fp32: Path, int8: Path, cfg: PreprocessConfig, settings: dict) -> dict:
    """The guard's figures (not yet judged)."""
    photos = evaluation_photos()
    ev = batch_of(photos, settings["eval_views_per_photo"], cfg)
    a, b = _logits(fp32, ev), _logits(int8, ev)
    labelled = labelled_photos()
    lb = np.stack([to_tensor(img, cfg).numpy() for _, _, img in labelled]).astype(np.float32)
    truth = np.array([label for _, label, _ in labelled])
    hits = {name: int((_logits(p, lb).argmax(1) == truth).sum())
            for name, p in (("fp32", fp32), ("int8", int8))}
    return {
        "eval_images": len(ev), "eval_source_photos": len(photos),
        "eval_set": "views (full frame, random crops 30-100% of the area, mirrors) of foolbox's 20 "
                    "ImageNet photos and matplotlib's grace_hopper.jpg; no source photo is in the "
                    "calibration set",
        "calibration_images": settings["calibration_views_per_photo"] * len(calibration_photos()),
        "calibration_set": "views of the scikit-image/scikit-learn sample photos, hubble_deep_field "
                           "and immunohistochemistry",
        **agreement(a, b),
        "labelled": {"set": "foolbox 3.3.4 imagenet_NN_LABEL.jpg", "n": len(labelled),
                     **{f"{k}_top1": round(v / len(labelled), 3) for k, v in hits.items()},
                     **{f"{k}_top1_ci95": wilson(v, len(labelled)) for k, v in hits.items()}},
    }


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    """Top-1 agreement and mean top-5 overlap of two sets of logits."""
    top5a, top5b = np.argsort(-a, 1)[:, :5], np.argsort(-b, 1)[:, :5]
    overlap = np.mean([len(set(x) & set(y)) / 5 for x, y in zip(top5a, top5b, strict=True)])
    agree = int((a.argmax(1) == b.argmax(1)).sum())
    return {"top1_agreement": round(agree / len(a), 4), "top1_agreement_ci95": wilson(agree, len(a)),
            "top5_overlap": round(float(overlap), 4)}


def evaluate_folders(fp32: Path, int8: Path, cfg: PreprocessConfig, calibration: PhotoFolder,
                     evaluation: PhotoFolder) -> dict:
    """The guard's figures on a folder of independent photos (not yet judged): agreement, and
    top-1 of FP32 and INT8 on the same labelled photos with their intervals."""
    batch = folder_batch(evaluation, cfg)
    a, b = _logits(fp32, batch), _logits(int8, batch)
    names = list(evaluation.photos)
    rows = [i for i, name in enumerate(names) if name in evaluation.labels]
    truth = np.array([evaluation.labels[names[i]] for i in rows])
    hits = {k: int((logits[rows].argmax(1) == truth).sum()) for k, logits in (("fp32", a), ("int8", b))}
    n = len(rows)
    labelled = {"set": str(evaluation.folder), "n": n}
    if n:
        labelled.update({**{f"{k}_top1": round(v / n, 4) for k, v in hits.items()},
                         **{f"{k}_top1_ci95": wilson(v, n) for k, v in hits.items()},
                         "top1_loss_points": round(100 * (hits["fp32"] - hits["int8"]) / n, 2)})
    return {"eval_images": len(batch), "eval_source_photos": len(batch),
            "eval_set": {**evaluation.describe(), "views_per_photo": 1},
            "calibration_images": len(calibration.photos),
            "calibration_set": {**calibration.describe(), "views_per_photo": 1},
            **agreement(a, b), "labelled": labelled}


def judge(figures: dict, settings: dict) -> dict:
    """The guard's verdict; raises GuardError when a threshold is not met."""
    failures = []
    if figures["eval_source_photos"] < settings["min_eval_photos"]:
        failures.append(f"{figures['eval_source_photos']} independent evaluation photos < "
                        f"{settings['min_eval_photos']}")
    if figures["top1_agreement"] < settings["min_top1_agreement"]:
        failures.append(f"top-1 agreement {figures['top1_agreement']} < {settings['min_top1_agreement']}")
    if figures["top5_overlap"] < settings["min_top5_overlap"]:
        failures.append(f"top-5 overlap {figures['top5_overlap']} < {settings['min_top5_overlap']}")
    report = {**figures, "thresholds": settings, "passed": not failures}
    if failures:
        raise GuardError("INT8 accuracy guard failed: " + "; ".join(failures) + f" ({figures})")
    return report
