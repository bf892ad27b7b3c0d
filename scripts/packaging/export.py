"""Export a checkpoint to a servable artifact and prove it matches the eager (research) model.

model source (scripts/packaging/sources/) + state dict (ModelInputs, read once) -> eager model
-> architecture.json and the architecture file beside the artifact -> ONNX (.onnx), TorchScript
(.pt), a torch.export program (.pt2) or the state dict itself for the eager format (.pth) ->
outputs compared with the eager model on real photos, from their encoded bytes through the
handler's own preprocessing (`preprocess_bytes`: header checks, decoding with the JPEG draft
path, RGB, resize, normalize).

Example:
    python -m scripts.packaging.export --arch efficientnet_lite0 --out build/efficientnet_lite0/model.pt
    python -m scripts.packaging.export --arch resnet50 --checkpoint my_resnet.pth --num-classes 10 \\
        --preprocess my_preprocess.json --format onnx --out build/my_resnet/model.onnx
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import tempfile
import threading
import time
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from handler import layout
from handler.head import SOFTMAX, Head, in_chunks, mean_of_views, served_classes, views_of
from handler.preprocessing import PreprocessConfig, preprocess_bytes
from handler.runner import load_runner
from handler.settings import ConfigError
from scripts import repo
from scripts.ops.labelled import PhotoFolder
from scripts.packaging import onnx_graph, precision, sources
from scripts.packaging.sample_photos import validation_images
from scripts.packaging.sources import ModelSpec, Source, SourceError

TOLERANCE = {"torchscript": 1e-4, "onnx": 1e-3, "torch-export": 1e-4, "eager": 1e-5}
# What to try when a format cannot hold a model.
INSTEAD = {"torchscript": "--format onnx or torch-export", "onnx": "--format torch-export or eager",
           "torch-export": "--format onnx, or eager with an architecture file",
           "eager": "--format onnx or torch-export"}
# The largest batch a torch.export program accepts (TorchServe's batchSize stays far below).
MAX_EXPORT_BATCH = 64
# Probabilities a model outputs itself (--activation none): each in [0, 1] and each row's sum 1,
# within float rounding.
PROBABILITY_SLACK = 1e-6
ROW_SUM_TOLERANCE = 1e-3
# A head width no real layer has: built with it, the classifier head's keys are the ones that show it.
PROBE_CLASSES = 7919


class ExportError(RuntimeError):
    """The checkpoint, architecture or labels are inconsistent, or validation failed."""


def default_checkpoint() -> Path:
    return source_of(repo.DEFAULT_MODEL).default_checkpoint()


def source_of(arch: str | ModelSpec | Source) -> Source:
    """The model source of an --arch name or a full spec (model file, class, kwargs); a Source
    is returned as it is. The one place a user's source spec becomes a Source."""
    if not isinstance(arch, str | ModelSpec):
        return arch
    spec = arch if isinstance(arch, ModelSpec) else ModelSpec(arch=arch)
    try:
        return sources.resolve(spec)
    except SourceError as exc:
        raise ExportError(str(exc)) from exc


def built(source: Source, num_classes: int | None) -> nn.Module:
    try:
        return source.build(num_classes)
    except SourceError as exc:
        raise ExportError(str(exc)) from exc


@contextmanager
def step(label: str, every: float = 10.0) -> Iterator[None]:
    """Announce a long step, print the elapsed time every `every` s while it runs, then its duration."""
    print(f"[export] {label} ...", flush=True)
    t0 = time.perf_counter()
    done = threading.Event()

    def tick() -> None:
        while not done.wait(every):
            print(f"  ... {label}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        yield
    finally:
        done.set()
        ticker.join()
    print(f"[export] {label}: {time.perf_counter() - t0:.1f} s", flush=True)


def build_model(arch: str | ModelSpec, num_classes: int | None) -> nn.Module:
    """The architecture of any model source (sources.resolve), randomly initialised."""
    return built(source_of(arch), num_classes)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a file (weights_only); a `{"state_dict": ...}` wrapper and DDP's
    `module.` prefix are unwrapped."""
    try:  # mmap keeps a large checkpoint out of RAM; only the zip format supports it
        state = torch.load(str(path), map_location="cpu", weights_only=True,
                           mmap=zipfile.is_zipfile(path))
    except Exception as exc:
        raise ExportError(f"Cannot read checkpoint {path}: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ExportError(f"{path} does not hold a state dict (got {type(state).__name__})")
    return {k.removeprefix("module."): v for k, v in state.items()}


def head_keys(source: Source) -> list[str]:
    """State-dict keys of the classifier head(s), found by building the model with PROBE_CLASSES
    outputs (on the meta device: no memory, when the architecture allows it). None for a source
    whose architecture fixes its outputs."""
    if not source.sets_num_classes:
        return []
    try:
        with torch.device("meta"):
            probe = built(source, PROBE_CLASSES)
    except ExportError:
        raise
    except Exception:  # a few builders compute on tensors at construction time
        probe = built(source, PROBE_CLASSES)
    return [k for k, v in probe.state_dict().items() if v.dim() and v.shape[0] == PROBE_CLASSES]


def checkpoint_num_classes(source: Source, state: Mapping[str, torch.Tensor]) -> int | None:
    """The number of outputs of the checkpoint's classifier (its last head tensor); None when
    the checkpoint has no head of this architecture (strict loading then names the mismatch)."""
    present = [k for k in head_keys(source) if k in state]
    return int(state[present[-1]].shape[0]) if present else None


def load_checkpoint(model: nn.Module, path: str | Path,
                    state: Mapping[str, torch.Tensor] | None = None) -> None:
    """Load a state dict strictly; name the first mismatched keys and shapes. `state`: the
    checkpoint at `path` as read already (read_state_dict), else it is read here."""
    state = read_state_dict(path) if state is None else state
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", shapes)):
            if items:
                parts.append(f"{len(items)} {label} (first: {', '.join(items[:3])})")
        raise ExportError(f"Checkpoint {path} does not match the architecture: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def to_torchscript(model: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """Script the model (trace when scripting is not supported) and freeze it for inference."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated but supported
        try:
            with step("scripting"):
                scripted = torch.jit.script(model)
        except Exception as exc:  # some torchvision models only trace
            print(f"  scripting failed ({type(exc).__name__}); tracing instead", file=sys.stderr)
            with step("tracing"):
                scripted = torch.jit.trace(model, example)
        with step("freezing"):
            return torch.jit.freeze(scripted.eval())


def export(model: nn.Module, out: Path, fmt: str, input_size: int | tuple[int, ...],
           fusable: bool = True) -> Path:
    """Write the artifact; returns its path. `input_size`: a square side, or the input's
    C x H x W. `fusable=False` writes the ONNX graph as torch emits it (pads from the input's
    shape, empty Pad inputs): the benchmark's "before". The eager format writes the state dict;
    its loader reads the files write_architecture puts beside it."""
    model.eval()
    shape = (3, input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    example = torch.zeros(1, *shape)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "torch-export":
        with step("torch.export (batch dimension dynamic)"):
            program = torch.export.export(model, (torch.zeros(2, *shape),), dynamic_shapes=(
                {0: torch.export.Dim("batch", min=1, max=MAX_EXPORT_BATCH)},))
            torch.export.save(program, str(out))
    elif fmt == "eager":
        torch.save(model.state_dict(), str(out))
    elif fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            scripted = to_torchscript(model, example)
            with step(f"saving {out.name}"):
                torch.jit.save(scripted, str(out))
        print(f"[export] {out} is {out.stat().st_size / 1e6:,.1f} MB", flush=True)
    elif fmt == "onnx":
        if fusable and hasattr(model, "fix_input_size"):  # constant pads, on a copy: the eager
            # model the validation compares against keeps computing its pads per input
            model = copy.deepcopy(model)
            model.fix_input_size(shape[-1])
        with step("exporting ONNX"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(out), input_names=["input"],
                              output_names=["logits"], dynamo=False, opset_version=17,
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        if fusable:
            dropped = onnx_graph.drop_empty_trailing_inputs(out)
            print(f"[export] dropped {dropped} empty optional inputs (lets ORT fuse Pad into Conv)",
                  flush=True)
    else:
        raise ExportError(f"Unknown format {fmt!r}: one of {sorted(TOLERANCE)}")
    return out


def check_format(source: Source, fmt: str) -> None:
    """The format can hold this source's model: the eager one rebuilds it from its code."""
    if fmt == "eager" and source.architecture_file is None and source.code_module is None:
        raise ExportError(f"--format eager needs an architecture file, and {source.name} is built by "
                          f"a library: use {INSTEAD['eager']}")


def write_architecture(folder: Path, source: Source, num_classes: int, fmt: str, head: Head) -> None:
    """architecture.json and the architecture file (as layout.MODEL_FILE) into `folder`, beside
    the artifact: what the eager loader rebuilds the model from, and what the archive ships."""
    folder.mkdir(parents=True, exist_ok=True)
    record = architecture_record(source, num_classes, fmt, head)
    (folder / layout.ARCHITECTURE).write_text(json.dumps(record, indent=2, sort_keys=True))
    if source.architecture_file is not None:  # else the code folder's module, staged beside it
        shutil.copy2(source.architecture_file, folder / layout.MODEL_FILE)


def architecture_record(source: Source, num_classes: int | None, fmt: str, head: Head = SOFTMAX) -> dict:
    """What the serialized model is (architecture.json), for people, tools and the eager loader:
    ONNX, TorchScript and torch.export need no model code, so without this the artifact would
    not say what it holds. `head`: what turns its outputs into probabilities (handler/head.py)."""
    record = {"arch": source.name, "num_classes": num_classes, "format": fmt,
              "serialized_file": layout.SERIALIZED_FILE[fmt], "head": head.record(),
              **source.record(num_classes)}
    if source.architecture_file is not None:
        record["model_file"] = layout.MODEL_FILE
    return record


def validation_batch(cfg: PreprocessConfig) -> tuple[list[str], torch.Tensor]:
    """The fixed set of real photos as JPEG bytes, each through the served transform from its
    first byte: the tensors the handler computes for the same bytes."""
    images = validation_images()
    return list(images), torch.stack([preprocess_bytes(data, cfg) for data in images.values()])


def validate(model: nn.Module, artifact: Path, cfg: PreprocessConfig, fmt: str,
             photos: tuple[list[str], torch.Tensor] | None = None, head: Head = SOFTMAX) -> dict:
    """Compare the artifact's outputs with the eager model's on real photos (`photos`: the
    validation batch when the caller has it already), and the answers' probabilities through
    `head` (each photo's views averaged, as the worker computes them)."""
    names, batch = photos or validation_batch(cfg)
    rows, views = views_of(batch)
    with torch.inference_mode():
        eager = in_chunks(model.eval(), rows, MAX_EXPORT_BATCH)
    exported = in_chunks(load_runner(artifact, threads=torch.get_num_threads()), rows, MAX_EXPORT_BATCH)
    diff = (eager - exported).abs().max().item()
    eager_p = mean_of_views(head.probabilities(eager), views)
    served_p = mean_of_views(head.probabilities(exported), views)
    prob_diff = (eager_p - served_p).abs().max().item()
    agree = (eager_p.argmax(1) == served_p.argmax(1)).float().mean().item()
    return {
        "format": fmt,
        "images": names,
        "views": views,
        "head": head.record(),
        "top1_agreement": agree,
        "max_abs_logit_diff": diff,
        "max_abs_prob_diff": prob_diff,
        "tolerance": TOLERANCE[fmt],
        "eager_top1": eager_p.argmax(1).tolist(),
        "passed": agree == 1.0 and diff <= TOLERANCE[fmt] and prob_diff <= TOLERANCE[fmt],
    }


def check_head(head: Head, outputs: torch.Tensor) -> None:
    """The head fits the eager model's outputs on the validation photos, or ExportError with
    what to do: a single logit is read through a sigmoid whatever the activation, so it cannot
    be a probability already; `none` takes probabilities, each in [0, 1], each row summing to 1."""
    if head.activation != "none":
        return
    if outputs.shape[1] == 1:
        raise ExportError("--activation none with a head of width 1: a single output is read as a "
                          "logit (p = sigmoid(logit / T)); drop the model's final sigmoid and "
                          "package without --activation none")
    low, high = outputs.min().item(), outputs.max().item()
    if low < -PROBABILITY_SLACK or high > 1 + PROBABILITY_SLACK:
        raise ExportError(f"--activation none, but the model's outputs on the validation photos "
                          f"range over [{low:.3g}, {high:.3g}], not probabilities: they are logits; "
                          "package with --activation softmax (one class) or sigmoid (multi-label)")
    sums = outputs.sum(dim=1)
    worst = (sums - 1).abs().max().item()
    if worst > ROW_SUM_TOLERANCE:
        raise ExportError(f"--activation none, but the model's rows sum to {sums.min().item():.4f}.."
                          f"{sums.max().item():.4f}, not 1 (tolerance {ROW_SUM_TOLERANCE}): per-class "
                          "probabilities (a final sigmoid)? Drop it from forward and package with "
                          "--activation sigmoid, which applies it and marks the predicted set")


def load_preprocess(path: Path) -> PreprocessConfig:
    """The model's preprocessing config; a missing or invalid file is an ExportError."""
    try:
        return PreprocessConfig.load(path)
    except ConfigError as exc:
        raise ExportError(f"Invalid preprocessing config: {exc}") from exc


@dataclass(frozen=True)
class ModelInputs:
    """The model to export, resolved once: its source, the checkpoint's path and state dict
    (None: random init) and the number of outputs to build it with (None: the architecture
    fixes it, read from the built model)."""

    source: Source
    checkpoint: Path | None
    state: Mapping[str, torch.Tensor] | None
    num_classes: int | None


def model_inputs(source: Source, checkpoint: Path | None, num_classes: int | None,
                 label_count: int | None = None) -> ModelInputs:
    """Read the checkpoint (once) and resolve the number of outputs: --num-classes if given,
    else the checkpoint's head width, else the number of labels (when known), else 1000. An
    architecture that fixes its outputs is built as it is, checked against --num-classes or
    the labels when given."""
    if num_classes is not None and num_classes < 1:
        raise ExportError(f"--num-classes must be positive, got {num_classes}")
    state = read_state_dict(checkpoint) if checkpoint is not None else None
    if num_classes is not None:
        wanted = num_classes
    elif not source.sets_num_classes:
        wanted = label_count
    else:
        found = checkpoint_num_classes(source, state) if state is not None else None
        wanted = found or label_count or 1000
    return ModelInputs(source, checkpoint, state, wanted)


def export_int8(model: nn.Module, out: Path, cfg: PreprocessConfig, guard: dict | None,
                input_shape: tuple[int, ...], photo_dirs: tuple[Path, Path] | None = None) -> dict:
    """FP32 fused ONNX (validated against the eager model) -> INT8 QDQ at `out` -> accuracy
    guard; the report holds both. Raises ExportError when either fails: no archive then.
    `photo_dirs`: (calibration, evaluation) folders of photos, else the small built-in sets."""
    from scripts.packaging import quantize

    try:
        settings = quantize.guard_settings(guard)
        folders = [quantize.photo_folder(d) for d in photo_dirs] if photo_dirs else None
        if folders:
            quantize.check_disjoint(*folders)
    except quantize.GuardError as exc:
        raise ExportError(str(exc)) from exc
    with tempfile.TemporaryDirectory() as tmp:  # the FP32 graph must not land in the archive
        fp32 = export(model, Path(tmp) / "fp32.onnx", "onnx", input_shape)
        with step("validating the FP32 graph against the eager model on real photos"):
            report = validate(model, fp32, cfg, "onnx")
        if not report["passed"]:
            raise ExportError(f"Exported FP32 graph disagrees with the eager model: {report}")
        with step(f"calibrating on {len(folders[0].photos)} photos of {folders[0].folder}" if folders
                  else f"calibrating on {settings['calibration_views_per_photo']} views per photo"):
            calibration = (quantize.folder_batch(folders[0], cfg) if folders
                           else quantize.calibration_batch(cfg, settings["calibration_views_per_photo"]))
        with step("quantizing to INT8 (QDQ, per-channel int8 weights, uint8 activations)"):
            out.parent.mkdir(parents=True, exist_ok=True)
            quantize.quantize(fp32, out, calibration)
        with step("INT8 accuracy guard on photos disjoint from the calibration set"):
            try:
                figures = (quantize.evaluate_folders(fp32, out, cfg, *folders) if folders
                           else quantize.evaluate(fp32, out, cfg, settings))
            except quantize.GuardError as exc:
                raise ExportError(str(exc)) from exc
    labelled = figures["labelled"]
    print(f"[export] INT8 guard: top-1 agreement {figures['top1_agreement']:.4f} (min "
          f"{settings['min_top1_agreement']}), top-5 overlap {figures['top5_overlap']:.4f} (min "
          f"{settings['min_top5_overlap']}) on {figures['eval_images']} images of "
          f"{figures['eval_source_photos']} photos; labelled top-1 FP32 {labelled.get('fp32_top1')} "
          f"INT8 {labelled.get('int8_top1')} (n={labelled['n']})", flush=True)
    try:
        report["int8_guard"] = quantize.judge(figures, settings)
    except quantize.GuardError as exc:
        raise ExportError(f"{exc}; refusing to package the INT8 model") from exc
    report["format"] = "onnx-int8"
    return report


def last_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[-1]}"


def check_preprocessing(cfg: PreprocessConfig, preprocess: Path, origin: Path | None = None) -> dict | None:
    """The model's own preprocessing code on the validation photos (preprocess_check); None
    without code. `origin`: the user's file the staged module was copied from (for errors)."""
    if cfg.transform is None:
        return None
    from scripts.packaging import preprocess_check

    code_path = origin or preprocess.parent / cfg.code
    with step(f"checking {code_path.name} on the validation photos"):
        try:
            report = preprocess_check.check(cfg, code_path, validation_images())
        except preprocess_check.PreprocessCheckError as exc:
            raise ExportError(str(exc)) from exc
    print(f"[export] {code_path.name}: output {report['output_shape']}, median "
          f"{report['median_ms']} ms per photo", flush=True)
    return report


def eager_outputs(model: nn.Module, rows: torch.Tensor, source: Source, preprocess: Path) -> torch.Tensor:
    """The model's N x outputs on the validation inputs (one row per view), or why it cannot
    take them."""
    try:
        with torch.inference_mode():
            logits = in_chunks(model, rows, MAX_EXPORT_BATCH)
    except Exception as exc:  # e.g. an input size the architecture does not accept (ViT: 224)
        raise ExportError(f"{source.name} failed on {'x'.join(map(str, rows.shape[1:]))} inputs "
                          f"from {preprocess}: {last_line(exc)}") from exc
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ExportError(f"{source.name} returned {type(logits).__name__} "
                          f"{getattr(logits, 'shape', '')}; a classifier returns N x classes logits")
    return logits


@dataclass(frozen=True)
class ExportJob:
    """One export step's inputs, resolved and checked once (check_format). `preprocess`: the
    preprocess.json validation reads (the staged one when packaging); `preprocess_code`: the
    user's file its "code" module was copied from, named in errors. `int8_guard`: the
    thresholds of the INT8 accuracy guard (fmt onnx-int8), else quantize.GUARD_DEFAULTS;
    `int8_photos`: its (calibration, evaluation) folders. `fuse_pads=False` writes the ONNX graph
    as torch emits it: the benchmark's unfused "before" archive (BENCHMARKS.md), a parameter for
    it alone, never a model-config setting. `head`: what the worker turns the outputs into
    (handler/head.py), checked against them and validated. `eval_photos`: labelled photos the
    artifact's and the eager model's accuracy is measured on (report["accuracy"], accuracy.py)."""

    model: ModelInputs
    preprocess: Path
    out: Path
    fmt: str = "torchscript"
    int8_guard: Mapping | None = None
    fuse_pads: bool = True
    preprocess_code: Path | None = None
    int8_photos: tuple[Path, Path] | None = None
    head: Head = SOFTMAX
    eval_photos: PhotoFolder | None = None

    def __post_init__(self) -> None:
        check_format(self.model.source, self.fmt)


def export_and_validate(arch: str | ModelSpec | Source, checkpoint: Path | None, preprocess: Path,
                        out: Path, fmt: str = "torchscript", num_classes: int | None = None) -> dict:
    """The export step of a model alone (this module's command line, the benchmarks)."""
    job = ExportJob(model_inputs(source_of(arch), checkpoint, num_classes), Path(preprocess),
                    Path(out), fmt)
    return run_export(job)


def run_export(job: ExportJob) -> dict:
    """Build the model, load its checkpoint, export it as job.fmt beside architecture.json and
    validate it on real photos; raises ExportError when validation fails."""
    source, wanted, preprocess, out, fmt, head = (job.model.source, job.model.num_classes,
                                                  job.preprocess, job.out, job.fmt, job.head)
    cfg = load_preprocess(preprocess)
    code_report = check_preprocessing(cfg, preprocess, job.preprocess_code)
    t0 = time.perf_counter()
    with step(f"building {source.name}" + (f" ({wanted} classes)" if wanted else "")):
        model = built(source, wanted)
    if job.model.checkpoint is not None:
        with step(f"loading checkpoint {job.model.checkpoint}"):
            load_checkpoint(model, job.model.checkpoint, job.model.state)
    model.eval()
    photos = validation_batch(cfg)
    rows, views = views_of(photos[1])
    outputs = eager_outputs(model, rows, source, preprocess)
    num_classes = int(outputs.shape[1])
    if wanted is not None and num_classes == 1 and wanted not in (1, 2):
        raise ExportError(f"{source.name} has one output, served as two classes (1 - p, p); the labels "
                          f"(or --num-classes) give {wanted}: list two names, the negative class first")
    if wanted is not None and served_classes(num_classes) != served_classes(wanted):
        raise ExportError(f"{source.name} has {num_classes} outputs, not {wanted} (from --num-classes, "
                          "the checkpoint or the labels)")
    check_head(head, outputs)
    if views > 1 and fmt == "onnx-int8":
        raise ExportError(f"{job.preprocess_code or preprocess} returns {views} views per image: the INT8 "
                          "guard calibrates and judges single views; use --format onnx")
    write_architecture(out.parent, source, num_classes, fmt, head)
    print(f"[export] exporting {fmt} -> {out}", flush=True)
    try:
        if fmt == "onnx-int8":
            report = export_int8(model, out, cfg, job.int8_guard, tuple(rows.shape[1:]), job.int8_photos)
        else:
            export(model, out, fmt, tuple(rows.shape[1:]), fusable=job.fuse_pads)
            with step("validating against the eager model and its head on real photos"):
                report = validate(model, out, cfg, fmt, photos, head)
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"{source.name} cannot be exported as {fmt}: {last_line(exc)}; try "
                          f"{INSTEAD.get(fmt, '--format onnx')}") from exc
    if code_report is not None:
        report["preprocess_code"] = code_report
    if fmt == "torchscript":  # what lets a GPU worker run it in reduced precision (handler/device.py)
        with step("checking reduced precision against FP32 on real photos"):
            reduced = precision.select(model, rows)
        report["reduced_precision"] = reduced
        tried = ", ".join(f"{dtype} max |prob diff| {r['max_abs_prob_diff']:.4f}"
                          for dtype, r in reduced["candidates"].items())
        print(f"[export] reduced precision on a GPU: {reduced['dtype'] or 'none (FP32 only)'} "
              f"({tried})", flush=True)
    report["num_classes"] = num_classes
    report["export_seconds"] = round(time.perf_counter() - t0, 2)
    print(f"[export] top-1 agreement {report['top1_agreement']:.3f}, max |logit diff| "
          f"{report['max_abs_logit_diff']:.2e}, max |prob diff| {report.get('max_abs_prob_diff', 0):.2e} "
          f"through the {head.activation} head (tolerance {report['tolerance']:.0e}) "
          f"in {report['export_seconds']} s", flush=True)
    if not report["passed"]:
        raise ExportError(f"Exported model disagrees with the eager model: {report}")
    if job.eval_photos is not None:
        report["accuracy"] = measured_accuracy(model, out, cfg, job.eval_photos)
    return report


def measured_accuracy(model: nn.Module, artifact: Path, cfg: PreprocessConfig, photos: PhotoFolder) -> dict:
    """The artifact's and the eager model's top-1/top-5 on labelled photos (accuracy.py)."""
    from scripts.packaging import accuracy

    runner = load_runner(artifact, threads=torch.get_num_threads())
    with step(f"accuracy on {len(photos.labels)} labelled photos of {photos.folder}"):
        try:
            return accuracy.measure(runner, model, cfg, photos)
        except accuracy.AccuracyError as exc:
            raise ExportError(str(exc)) from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default=repo.DEFAULT_MODEL,
                        help="efficientnet_lite0, a torchvision classifier name (resnet50, ...), "
                             "timm:NAME or hf:DIR")
    parser.add_argument("--checkpoint", default="default",
                        help="state-dict file; 'default' = the packaged EfficientNet-Lite0 ImageNet "
                             "weights; 'none' = random init (for benchmarks)")
    parser.add_argument("--num-classes", type=int,
                        help="outputs of the classifier head (default: the checkpoint's, else 1000)")
    parser.add_argument("--preprocess", type=Path,
                        default=repo.CONFIG_DIR / repo.DEFAULT_MODEL / "preprocess.json",
                        help="preprocessing config used for validation")
    parser.add_argument("--format", choices=sorted(TOLERANCE) + ["onnx-int8"], default="torchscript",
                        help="onnx-int8: the fused ONNX graph quantized to INT8, refused unless "
                             "its accuracy guard passes (scripts/packaging/quantize.py)")
    parser.add_argument("--out", type=Path, required=True, help="artifact path (.pt or .onnx)")
    parser.add_argument("--report", type=Path, help="write the validation report (JSON) here")
    args = parser.parse_args(argv)
    try:
        source = source_of(args.arch)
        report = export_and_validate(source, resolve_checkpoint(args.checkpoint, source),
                                     args.preprocess, args.out, args.format, args.num_classes)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.report:
        args.report.write_text(json.dumps(report, indent=2))
    return 0


def resolve_checkpoint(value: str | None, arch: str | ModelSpec | Source) -> Path | None:
    """--checkpoint: a state-dict file, 'none' (random init) or 'default' (the source's own
    weights: EfficientNet-Lite0's packaged ones; none for the others)."""
    if value in (None, "none"):
        return None
    if value == "default":
        source = source_of(arch)
        found = source.default_checkpoint()
        if found is None and source.sets_num_classes:
            raise ExportError(f"No default checkpoint for {source.name}: pass --checkpoint FILE or 'none'")
        return found
    path = Path(value)
    if not path.is_file():
        raise ExportError(f"Checkpoint {path} does not exist")
    return path


if __name__ == "__main__":
    sys.exit(main())
