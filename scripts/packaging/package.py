"""Package a checkpoint into a TorchServe model archive (.mar) with a provenance manifest.

Steps: every input resolved and checked once (plan.py: model source, model config, checkpoint,
labels, preprocessing) -> stage the preprocessing in build/NAME/ -> export + validate on real
photos through those very files, architecture.json and model.py beside the artifact
(export.py) -> stage the rest (the layout handler/layout.py names: the entry module, the
`handler` package, labels, model config) -> provenance.json (SHA-256 of every file, versions,
validation) -> torch-model-archiver -> make the archive byte-reproducible -> model_store/NAME.mar

Example (the default model):
    python -m scripts.packaging.package
A torchvision architecture with your checkpoint:
    python -m scripts.packaging.package --arch resnet50 --checkpoint resnet50_cats.pth \\
        --model-name cats --labels cats_labels.json --preprocess cats_preprocess.json
Your own class and preprocessing code (docs/bring-your-own-model.md):
    python -m scripts.packaging.package --model-file my_net.py --model-class MyNet \\
        --model-kwargs '{"width": 32}' --checkpoint state_dict.pth --labels labels.json \\
        --preprocess-code my_pre.py --format onnx
timm or Hugging Face: --arch timm:resnet18, --arch hf:path/to/save_pretrained_folder
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from handler import layout
from handler.head import ACTIVATIONS, SOFTMAX, Head
from handler.settings import ConfigError
from scripts import repo
from scripts.ops import signature
from scripts.ops.signature import SignatureError
from scripts.packaging import accuracy, code_dir
from scripts.packaging.export import ExportError, load_preprocess, run_export
from scripts.packaging.golden import stage_golden
from scripts.packaging.manifest import PROGRESS_MIN_BYTES, build_manifest, hash_file
from scripts.packaging.plan import PackagingInputs, PackagingPlan, code_files_of, plan

# The GPU benchmark stages an archive's layout by hand and reads its labels through here.
from scripts.packaging.reproducible import make_reproducible
from scripts.packaging.sources import ModelSpec, SourceError, parse_kwargs

ARCHIVE_SUFFIX = {"default": ".mar", "tgz": ".tar.gz", "no-archive": ""}


def stage_files(stage: Path, labels: Mapping, model_config: Path, architecture: dict | None = None,
                architecture_file: Path | None = None) -> None:
    """Copy what the worker needs beside the serialized model, the preprocessing and the
    architecture files (staged first, see build_stage): the entry module at the root, the whole
    `handler` package as a package, the model config and labels. `architecture` and
    `architecture_file`: architecture.json and model.py, for a stage built without export.py."""
    shutil.copy2(repo.HANDLER_DIR / layout.ENTRY_MODULE, stage / layout.ENTRY_MODULE)
    shutil.copytree(repo.HANDLER_DIR, stage / layout.PACKAGE,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", layout.ENTRY_MODULE))
    (stage / layout.LABELS).write_text(json.dumps(dict(labels), indent=1, sort_keys=True))
    shutil.copy2(model_config, stage / layout.MODEL_CONFIG)
    if architecture is not None:
        (stage / layout.ARCHITECTURE).write_text(json.dumps(architecture, indent=2, sort_keys=True))
    if architecture_file is not None:
        shutil.copy2(architecture_file, stage / layout.MODEL_FILE)


def stage_preprocessing(plan: PackagingPlan) -> None:
    """preprocess.json (and the preprocessing module) in the stage, before export: validation
    reads these very files, and the archive ships them."""
    code = plan.job.preprocess_code
    if code is not None:
        shutil.copy2(code, plan.stage / layout.PREPROCESS_CODE)
    plan.job.preprocess.write_text(json.dumps(dict(plan.preprocess), indent=2))


def run_archiver(stage: Path, model_name: str, version: str, artifact: str, export_dir: Path,
                 archive_format: str = "default") -> Path:
    """Call torch-model-archiver on the staged files (into an export folder plan.check_export_dir
    accepts); returns the archive path."""
    export_dir.mkdir(parents=True, exist_ok=True)
    # --extra-files with a folder copies the folder's entries into the archive root, its
    # subfolders as subfolders: the stage folder itself keeps `handler/` a package.
    cmd = [str(Path(sys.executable).parent / "torch-model-archiver"),
           "--model-name", model_name, "--version", version,
           "--serialized-file", str(stage / artifact), "--handler", str(stage / layout.ENTRY_MODULE),
           "--extra-files", str(stage),
           "--config-file", str(stage / layout.MODEL_CONFIG),
           "--export-path", str(export_dir), "--archive-format", archive_format, "--force"]
    if (stage / layout.MODEL_FILE).is_file():  # TorchServe's model file: MANIFEST.json names it
        cmd += ["--model-file", str(stage / layout.MODEL_FILE)]
    out = export_dir / f"{model_name}{ARCHIVE_SUFFIX[archive_format]}"
    total = _size(stage)
    proc = subprocess.Popen(cmd)
    show = total >= PROGRESS_MIN_BYTES
    start = time.perf_counter()
    while proc.poll() is None:  # the archive grows on disk: report its size and rate
        time.sleep(0.5)
        if show:
            _archive_progress(out, total, time.perf_counter() - start)
    if show:
        print(file=sys.stderr)
    if proc.returncode != 0:
        raise ExportError(f"torch-model-archiver failed (exit {proc.returncode}) for {model_name}")
    return out


def _size(path: Path) -> int:
    try:
        if path.is_dir():
            return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        return path.stat().st_size if path.exists() else 0
    except OSError:  # a file vanished between listing and stat
        return 0


def _archive_progress(out: Path, total: int, elapsed: float) -> None:
    done = _size(out)
    bar = "#" * int(30 * min(done / total, 1.0))
    print(f"\r  archiving {out.name} [{bar:<30}] {done / 1e6:,.0f}/~{total / 1e6:,.0f} MB "
          f"{done / max(elapsed, 1e-9) / 1e6:,.0f} MB/s {elapsed:.0f} s", end="", file=sys.stderr,
          flush=True)


def package(inputs: PackagingInputs) -> Path:
    """Resolve the inputs (plan.plan), export, validate, stage, write the manifest and archive;
    returns the .mar path."""
    spec = inputs.spec
    code_files = code_files_of(spec.code_dir)
    with _servable_imports(spec):  # the model's code imports from its folder alone
        the_plan = plan(inputs, code_files)
        validation = build_stage(the_plan)
    return archive(the_plan, validation)


def build_stage(plan: PackagingPlan) -> dict:
    """Every file of the archive but the manifest, in build/NAME/; returns the validation report."""
    stage = plan.stage
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    code_dir.stage(plan.spec.code_dir, list(plan.code_files), stage)
    stage_preprocessing(plan)
    validation = run_export(plan.job)  # also writes architecture.json and model.py
    if plan.expect_top1 is not None:
        accuracy.check_expected(validation["accuracy"], plan.expect_top1)
    stage_files(stage, plan.labels, plan.model_config)
    # After the files the eager format loads from (model.py, architecture.json).
    stage_golden(stage, plan.job.out, load_preprocess(plan.job.preprocess), plan.fmt, plan.job.head)
    return validation


def archive(plan: PackagingPlan, validation: dict) -> Path:
    """provenance.json, then torch-model-archiver, then the archive made byte-reproducible."""
    stage, name = plan.stage, plan.model_name
    manifest = build_manifest(stage, model_name=name, version=plan.version, arch=plan.source.name,
                              fmt=plan.fmt, checkpoint=plan.model.checkpoint, validation=validation)
    (stage / layout.MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    print(f"[package] archiving {name} v{plan.version} ({plan.archive_format})", flush=True)
    t0 = time.perf_counter()
    mar = run_archiver(stage, name, plan.version, plan.job.out.name, plan.export_dir, plan.archive_format)
    make_reproducible(mar, manifest["build"]["built_at"])  # same inputs -> same bytes
    signature.signature_path(mar).unlink(missing_ok=True)  # an older build's: other bytes
    size = sum(f.stat().st_size for f in mar.rglob("*")) if mar.is_dir() else mar.stat().st_size
    print(f"[package] wrote {mar} ({size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f} s; "
          f"sha256 {hash_file(mar)[:16] if mar.is_file() else '-'}", flush=True)
    return mar


@contextmanager
def _servable_imports(spec: ModelSpec) -> Iterator[None]:
    """The block imports the model's code from its folder; every module it imported must be one
    the worker can import too (code_dir.importing)."""
    try:
        with code_dir.importing(spec.code_dir, spec.model_file):
            yield
    except code_dir.CodeDirError as exc:
        raise ExportError(str(exc)) from exc


def head_of(activation: str, temperature: float, threshold: float | None) -> Head:
    """The output head the flags describe; a threshold is the sigmoid head's alone."""
    if threshold is not None and activation != "sigmoid":
        raise ExportError(f"--threshold marks the classes a sigmoid head predicts; with --activation "
                          f"{activation} the answer's best class is the prediction: add --activation "
                          "sigmoid or drop --threshold")
    try:
        return Head(activation, temperature, SOFTMAX.threshold if threshold is None else threshold)
    except ConfigError as exc:
        raise ExportError(f"--activation/--temperature/--threshold: {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default=repo.DEFAULT_MODEL,
                        help="efficientnet_lite0, a torchvision classifier name, timm:NAME or hf:DIR "
                             "(a save_pretrained folder)")
    parser.add_argument("--model-file", type=Path,
                        help="your own architecture file (shipped in the archive as model.py)")
    parser.add_argument("--model-class",
                        help="the nn.Module class in --model-file (default: its only one), or "
                             "package.module:Class in --code-dir")
    parser.add_argument("--code-dir", type=Path,
                        help="your research code folder: every .py under it (packages too) ships in "
                             "the archive, and the model file, the class and the preprocessing "
                             "module import from it at packaging and in the worker")
    parser.add_argument("--model-kwargs", help="JSON object of the class's constructor arguments")
    parser.add_argument("--checkpoint", default="default",
                        help="state-dict file, 'default' (the source's own weights: Lite0's packaged "
                             "ones, a Hugging Face folder's; else random) or 'none' (random)")
    parser.add_argument("--model-name", help="name served at /predictions/NAME (default: from --arch "
                                             "or --model-file)")
    parser.add_argument("--version", default="1.0", help="model version")
    parser.add_argument("--num-classes", type=int,
                        help="outputs of the classifier (default: the checkpoint's head; random "
                             "init: the number of labels)")
    parser.add_argument("--preprocess", type=Path,
                        help="preprocess.json (default: the model's own config for timm and Hugging "
                             "Face, else config/NAME/)")
    parser.add_argument("--preprocess-code", type=Path,
                        help="a module defining preprocess(image: PIL.Image) -> numpy C x H x W "
                             "float32, shipped in the archive and run at validation and serving")
    parser.add_argument("--labels", type=Path, help="index_to_name.json (default: config/NAME/)")
    parser.add_argument("--model-config", type=Path, help="model-config.yaml (default: config/NAME/)")
    parser.add_argument("--format", choices=sorted(layout.SERIALIZED_FILE),
                        help="serialized model (default: export.format in the model config, else "
                             "torchscript; the default model ships onnx, see BENCHMARKS.md); "
                             "onnx-int8 quantizes and refuses to package unless the accuracy guard "
                             "(export: int8_guard: in the model config) passes")
    parser.add_argument("--calibration-dir", type=Path,
                        help="onnx-int8: a folder of photos to calibrate on (default: the small "
                             "built-in set)")
    parser.add_argument("--eval-dir", type=Path,
                        help="a folder of labelled photos (LABELS.tsv: file, class index): top-1 and "
                             "top-5 of the packaged model and of the eager one, through the served "
                             "preprocessing, into provenance.json; onnx-int8: the photos its "
                             "accuracy guard judges on, each photo once")
    parser.add_argument("--expect-top1", type=float,
                        help="the top-1 the model was validated with (e.g. 0.873): refuse to package "
                             "when it lies outside the packaged model's 95%% interval on --eval-dir")
    parser.add_argument("--activation", choices=ACTIVATIONS, default=SOFTMAX.activation,
                        help="the model's output head: softmax (one class per image), sigmoid "
                             "(multi-label: each class's own probability, the classes at or above "
                             "--threshold predicted) or none (forward returns probabilities already). "
                             "A single output (binary) is always two classes, 1 - p and p, with "
                             "p = sigmoid(logit / T)")
    parser.add_argument("--temperature", type=float, default=SOFTMAX.temperature,
                        help="divides the logits before the activation (calibration); default 1")
    parser.add_argument("--threshold", type=float,
                        help=f"with --activation sigmoid: the probability from which a class is "
                             f"predicted (default {SOFTMAX.threshold})")
    parser.add_argument("--export-path", type=Path, default=repo.MODEL_STORE)
    parser.add_argument("--archive-format", choices=["default", "tgz", "no-archive"],
                        default="default")
    parser.add_argument("--sign-key", type=Path,
                        help="PEM elliptic-curve private key (P-256/384/521): writes NAME.mar.sig "
                             "beside the archive, verified at start with ARCHIVE_VERIFY_KEY "
                             "(scripts/ops/signature.py)")
    args = parser.parse_args(argv)
    if args.sign_key and args.archive_format != "default":
        parser.error("--sign-key signs a .mar: it takes --archive-format default")
    if args.expect_top1 is not None and args.eval_dir is None:
        parser.error("--expect-top1 needs --eval-dir: the labelled photos to measure top-1 on")
    try:
        own_code = args.model_file or ":" in (args.model_class or "")
        spec = ModelSpec(arch=None if own_code else args.arch, model_file=args.model_file,
                         model_class=args.model_class, model_kwargs=parse_kwargs(args.model_kwargs),
                         code_dir=args.code_dir)
        mar = package(PackagingInputs(
            arch=spec, checkpoint=args.checkpoint, model_name=args.model_name, version=args.version,
            num_classes=args.num_classes, preprocess=args.preprocess, labels=args.labels,
            model_config=args.model_config, fmt=args.format, export_dir=args.export_path,
            archive_format=args.archive_format, preprocess_code=args.preprocess_code,
            calibration_dir=args.calibration_dir, eval_dir=args.eval_dir,
            head=head_of(args.activation, args.temperature, args.threshold),
            expect_top1=args.expect_top1))
        if args.sign_key:
            print(f"[package] signed: {signature.sign(mar, args.sign_key)}", flush=True)
    except SignatureError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ExportError, accuracy.AccuracyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
