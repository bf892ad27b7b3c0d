"""Package a checkpoint into a TorchServe model archive (.mar) with a provenance manifest.

Steps: model source (sources/) -> stage the preprocessing in build/NAME/ -> export +
validate on real photos through those very files (export.py) -> stage the rest (the layout
handler/layout.py names: the entry module, the `handler` package, labels, model config, the
architecture file) -> provenance.json (SHA-256 of every file, versions, validation) ->
torch-model-archiver -> make the archive byte-reproducible -> model_store/NAME.mar

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
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from handler import layout
from handler.head import ACTIVATIONS, SOFTMAX, Head, served_classes
from handler.preprocessing import PreprocessConfig
from handler.settings import ConfigError, load_model_config, model_config_blocks
from scripts import repo
from scripts.ops import signature
from scripts.ops.labelled import LabelledSetError, PhotoFolder, labelled_folder
from scripts.ops.signature import SignatureError
from scripts.packaging import accuracy, code_dir
from scripts.packaging.export import (
    ExportError,
    architecture_record,
    export_and_validate,
    load_preprocess,
    resolve_checkpoint,
    resolve_num_classes,
    source_of,
)
from scripts.packaging.golden import stage_golden
from scripts.packaging.manifest import PROGRESS_MIN_BYTES, build_manifest, hash_file
from scripts.packaging.reproducible import make_reproducible
from scripts.packaging.sources import ModelSpec, Source, SourceError, parse_kwargs

ARCHIVE_SUFFIX = {"default": ".mar", "tgz": ".tar.gz", "no-archive": ""}


def read_labels(path: Path) -> dict:
    """A labels file: a JSON list of names or {"0": "name", ...}."""
    try:
        labels = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ExportError(f"Cannot read labels {path}: {exc}") from exc
    if isinstance(labels, list):
        labels = {str(i): name for i, name in enumerate(labels)}
    if not isinstance(labels, dict):
        raise ExportError(f"Labels file {path} must hold a JSON list or object")
    return labels


def load_labels(labels: dict, num_classes: int, path: Path | str) -> dict:
    """Labels as {"0": "name", ...} (`path`: where they come from, for errors); their count
    must equal the model's outputs, two for a single output (binary: 1 - p and p)."""
    if num_classes == 1 and len(labels) != 2:
        raise ExportError(f"Labels file {path} has {len(labels)} entries; the model has one output, "
                          "served as two classes (1 - p, p): list two names, the negative class first")
    num_classes = served_classes(num_classes)
    if len(labels) != num_classes:
        raise ExportError(f"Labels file {path} has {len(labels)} entries but the model has "
                          f"{num_classes} outputs (from the checkpoint's head or --num-classes)")
    missing = [str(i) for i in range(num_classes) if str(i) not in labels]
    if missing:
        raise ExportError(f"Labels file {path} lacks indices {missing[:5]}")
    return labels


def stage_files(stage: Path, labels: dict, model_config: Path, architecture: dict,
                architecture_file: Path | None = None) -> None:
    """Copy what the worker needs beside the serialized model and the preprocessing (staged
    first, see stage_preprocessing): the entry module at the root, the whole `handler` package
    as a package, the model config, labels, architecture.json and the architecture file."""
    shutil.copy2(repo.HANDLER_DIR / layout.ENTRY_MODULE, stage / layout.ENTRY_MODULE)
    shutil.copytree(repo.HANDLER_DIR, stage / layout.PACKAGE,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", layout.ENTRY_MODULE))
    (stage / layout.LABELS).write_text(json.dumps(labels, indent=1, sort_keys=True))
    shutil.copy2(model_config, stage / layout.MODEL_CONFIG)
    (stage / layout.ARCHITECTURE).write_text(json.dumps(architecture, indent=2, sort_keys=True))
    if architecture_file is not None:
        shutil.copy2(architecture_file, stage / layout.MODEL_FILE)


def stage_preprocessing(stage: Path, source: Source, preprocess: Path | None, default: Path,
                        code: Path | None) -> Path:
    """preprocess.json (and the preprocessing module) in the stage, before export: validation
    reads these very files, and the archive ships them. Its numbers: --preprocess, else the
    model's own config (timm's pretrained config, a Hugging Face image processor's), else the
    model name's config folder. Returns the staged preprocess.json."""
    if preprocess is not None:
        raw, where = _read_json(preprocess), str(preprocess)
    elif (numbers := _source_numbers(source)) is not None:
        raw = {"_comment": f"From {source.name}'s own preprocessing config", **numbers}
        where = f"{source.name}'s preprocessing config"
    else:
        raw, where = _read_json(default), str(default)
    try:  # errors name the file the user gave, not the staged copy
        PreprocessConfig.from_dict({**raw, **({"code": layout.PREPROCESS_CODE} if code else {})}, where)
    except ConfigError as exc:
        raise ExportError(f"Invalid preprocessing config: {exc}") from exc
    if code is not None:
        if not Path(code).is_file():
            raise ExportError(f"--preprocess-code {code} does not exist")
        shutil.copy2(code, stage / layout.PREPROCESS_CODE)
        raw["code"] = layout.PREPROCESS_CODE
    out = stage / layout.PREPROCESS_CONFIG
    out.write_text(json.dumps(raw, indent=2))
    return out


def _source_numbers(source: Source) -> dict | None:
    try:
        return source.preprocess_numbers()
    except SourceError as exc:
        raise ExportError(str(exc)) from exc


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ExportError(f"Cannot read {path}: {exc}") from exc


def default_model_name(source: Source) -> str:
    """A name TorchServe can serve at /predictions/NAME, from the source's: timm:NAME and hf:DIR
    give NAME and DIR, an architecture file my_net.py:MyNet gives my_net."""
    name = source.name.split(":")[-1] if source.architecture_file is None else source.name.split(".")[0]
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def export_format(model_config: Path) -> str:
    """The model config's `export.format` (how this model is served fastest), else TorchScript.
    The whole config is checked first: a misspelt key is an error, not a silent default."""
    try:
        fmt = model_config_blocks(load_model_config(model_config), model_config)["export"]["format"]
    except ConfigError as exc:
        raise ExportError(str(exc)) from exc
    if fmt not in layout.SERIALIZED_FILE:
        raise ExportError(f"{model_config}: export.format {fmt!r} is not one of "
                          f"{sorted(layout.SERIALIZED_FILE)}")
    return fmt


def check_export_dir(export_dir: Path, model_name: str) -> None:
    """torch-model-archiver copies the files into $TMPDIR/NAME and zips that folder: an archive
    exported into the same folder would zip itself as it grows, without end."""
    if Path(export_dir).resolve() == (Path(tempfile.gettempdir()) / model_name).resolve():
        raise ExportError(f"--export-path {export_dir} is torch-model-archiver's scratch folder "
                          f"for {model_name}; choose another folder")


def run_archiver(stage: Path, model_name: str, version: str, artifact: str, export_dir: Path,
                 archive_format: str = "default") -> Path:
    """Call torch-model-archiver on the staged files; returns the archive path."""
    check_export_dir(export_dir, model_name)
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


def package(arch: str | ModelSpec = repo.DEFAULT_MODEL, checkpoint: str = "default",
            model_name: str | None = None, version: str = "1.0", num_classes: int | None = None,
            preprocess: Path | None = None, labels: Path | None = None,
            model_config: Path | None = None, fmt: str | None = None,
            export_dir: Path = repo.MODEL_STORE, archive_format: str = "default", *,
            preprocess_code: Path | None = None, calibration_dir: Path | None = None,
            eval_dir: Path | None = None, fuse_pads: bool = True, head: Head = SOFTMAX,
            expect_top1: float | None = None) -> Path:
    """Export, validate, stage, write the manifest and archive; returns the .mar path. `arch`:
    a name (sources.resolve) or a ModelSpec (an architecture file, class and kwargs).
    `fuse_pads=False` (the benchmark's unfused "before" archive, BENCHMARKS.md; not a model
    setting nor a command-line option) exports the ONNX graph as torch emits it.
    `calibration_dir`: the INT8 export's calibration photos (with `eval_dir`, which its guard
    judges on). `eval_dir`, any format: labelled photos the artifact's and the eager model's
    top-1/top-5 are measured on (provenance.json's validation.accuracy); `expect_top1`: refuse
    the archive when this top-1 lies outside the artifact's 95% interval there. `head`: the
    output head the worker applies (handler/head.py), recorded in architecture.json."""
    spec = arch if isinstance(arch, ModelSpec) else ModelSpec(arch=arch)
    code_files = _code_files(spec.code_dir)
    with _servable_imports(spec):  # the model's code imports from its folder alone
        source = source_of(arch)
        model_name = model_name or default_model_name(source)
        config_dir = repo.CONFIG_DIR / model_name
        if not config_dir.is_dir():
            config_dir = repo.CONFIG_DIR / repo.DEFAULT_MODEL
        model_config = Path(model_config or config_dir / layout.MODEL_CONFIG)
        config_format = export_format(model_config)  # checks every key of the model config first
        export_settings = model_config_blocks(load_model_config(model_config), model_config)["export"]
        fmt = fmt or config_format
        if fmt not in layout.SERIALIZED_FILE:
            raise ExportError(f"format {fmt!r} is not one of {sorted(layout.SERIALIZED_FILE)}")
        check_export_dir(Path(export_dir), model_name)
        int8_photos = int8_photo_dirs(fmt, calibration_dir, eval_dir)
        eval_photos = accuracy_photos(eval_dir, expect_top1)
        checkpoint_path = resolve_checkpoint(checkpoint, source)
        label_map, width = model_labels(source, labels, config_dir, checkpoint_path, num_classes)

        stage = repo.BUILD_DIR / model_name
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
        code_dir.stage(spec.code_dir, code_files, stage)
        staged_preprocess = stage_preprocessing(stage, source, preprocess,
                                                config_dir / layout.PREPROCESS_CONFIG, preprocess_code)
        artifact = layout.SERIALIZED_FILE[fmt]
        validation = export_and_validate(source, checkpoint_path, staged_preprocess, stage / artifact, fmt,
                                         width, export_settings["int8_guard"], fuse_pads,
                                         preprocess_code, int8_photos, head, eval_photos)
        if expect_top1 is not None:
            accuracy.check_expected(validation["accuracy"], expect_top1)
        architecture = architecture_record(source, validation["num_classes"], fmt, head)
        stage_files(stage, label_map, model_config, architecture, source.architecture_file)
        # After the files the eager format loads from (model.py, architecture.json).
        stage_golden(stage, stage / artifact, load_preprocess(staged_preprocess), fmt, head)
    manifest = build_manifest(stage, model_name=model_name, version=version, arch=source.name,
                              fmt=fmt, checkpoint=checkpoint_path, validation=validation)
    (stage / layout.MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    print(f"[package] archiving {model_name} v{version} ({archive_format})", flush=True)
    t0 = time.perf_counter()
    mar = run_archiver(stage, model_name, version, artifact, Path(export_dir), archive_format)
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


def _code_files(folder: Path | None) -> list[Path]:
    if folder is None:
        return []
    try:
        return code_dir.code_files(folder)
    except code_dir.CodeDirError as exc:
        raise ExportError(str(exc)) from exc


def accuracy_photos(eval_dir: Path | None, expect_top1: float | None) -> PhotoFolder | None:
    """The labelled photos of --eval-dir, read before any export; --expect-top1 needs them."""
    if expect_top1 is not None and not 0.0 <= expect_top1 <= 1.0:
        raise ExportError(f"--expect-top1 {expect_top1} is not a fraction between 0 and 1 (e.g. 0.873)")
    if eval_dir is None:
        if expect_top1 is not None:
            raise ExportError("--expect-top1 needs --eval-dir: the labelled photos to measure top-1 on")
        return None
    try:
        return labelled_folder(eval_dir)
    except LabelledSetError as exc:
        raise ExportError(f"--eval-dir: {exc}") from exc


def int8_photo_dirs(fmt: str, calibration_dir: Path | None, eval_dir: Path | None
                    ) -> tuple[Path, Path] | None:
    """The INT8 guard's (calibration, evaluation) folders; other formats take no calibration."""
    if fmt != "onnx-int8":
        if calibration_dir is not None:
            raise ExportError("--calibration-dir goes with --format onnx-int8")
        return None
    if calibration_dir is None and eval_dir is None:
        return None
    if calibration_dir is None or eval_dir is None:
        raise ExportError("--calibration-dir and --eval-dir go together: calibrate on one set, "
                          "judge on the other")
    if Path(calibration_dir).resolve() == Path(eval_dir).resolve():
        raise ExportError(f"--calibration-dir and --eval-dir are both {calibration_dir}: they must "
                          "be disjoint")
    return Path(calibration_dir), Path(eval_dir)


def model_labels(source: Source, labels: Path | None, config_dir: Path, checkpoint: Path | None,
                 num_classes: int | None) -> tuple[dict, int]:
    """(labels, the model's number of outputs): --labels, else the model's own (a Hugging Face
    config's id2label), else the config folder's; their count is the model's number of outputs
    (two for one output), checked against --num-classes or the checkpoint's head now, and
    against the built model at export."""
    own = source.labels() if labels is None else None
    path = Path(labels or config_dir / layout.LABELS)
    found = own if own is not None else read_labels(path)
    where = f"{source.name}'s config" if own is not None else str(path)
    # The model's outputs: --num-classes, else the checkpoint's head, else (random init) the labels.
    wanted = resolve_num_classes(source, checkpoint, num_classes, fallback=len(found)) or len(found)
    return load_labels(found, wanted, where), wanted


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
        mar = package(spec, args.checkpoint, args.model_name, args.version, args.num_classes,
                      args.preprocess, args.labels, args.model_config, args.format, args.export_path,
                      args.archive_format, preprocess_code=args.preprocess_code,
                      calibration_dir=args.calibration_dir, eval_dir=args.eval_dir,
                      head=head_of(args.activation, args.temperature, args.threshold),
                      expect_top1=args.expect_top1)
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
