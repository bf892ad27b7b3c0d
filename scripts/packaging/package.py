"""Package a checkpoint into a TorchServe model archive (.mar) with a provenance manifest.

Steps: export + validate (export.py) -> stage the archive's files in build/NAME/ (the layout
handler/layout.py names: the entry module, the `handler` package, preprocessing config, labels,
model config) -> write provenance.json (SHA-256 of every file, versions, validation) ->
torch-model-archiver -> make the archive byte-reproducible -> model_store/NAME.mar

Example (the default model):
    python -m scripts.packaging.package
Your own checkpoint:
    python -m scripts.packaging.package --arch resnet50 --checkpoint resnet50_cats.pth \\
        --model-name cats --labels cats_labels.json --preprocess cats_preprocess.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from handler import layout
from handler.settings import ConfigError, load_model_config, model_config_blocks
from scripts import repo
from scripts.packaging.export import ExportError, export_and_validate, resolve_checkpoint, resolve_num_classes
from scripts.packaging.manifest import PROGRESS_MIN_BYTES, build_manifest, hash_file
from scripts.packaging.reproducible import make_reproducible

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


def load_labels(path: Path, num_classes: int) -> dict:
    """Labels as {"0": "name", ...}; their count must equal the model's outputs."""
    labels = read_labels(path)
    if len(labels) != num_classes:
        raise ExportError(f"Labels file {path} has {len(labels)} entries but the model has "
                          f"{num_classes} outputs (from the checkpoint's head or --num-classes)")
    missing = [str(i) for i in range(num_classes) if str(i) not in labels]
    if missing:
        raise ExportError(f"Labels file {path} lacks indices {missing[:5]}")
    return labels


def architecture_record(arch: str, num_classes: int, fmt: str) -> dict:
    """What the serialized model is, for people and tools reading the archive (TorchScript/ONNX
    need no model code, so without this the artifact would not say what it holds)."""
    from importlib import metadata

    if arch == repo.DEFAULT_MODEL:
        source = {"source": "scripts/packaging/architectures/efficientnet_lite0.py",
                  "class": "EfficientNetLite0"}
    else:
        source = {"source": "torchvision", "torchvision_version": metadata.version("torchvision"),
                  "builder": f"torchvision.models.get_model({arch!r}, weights=None, "
                             f"num_classes={num_classes})"}
    return {"arch": arch, "num_classes": num_classes, "format": fmt,
            "serialized_file": layout.SERIALIZED_FILE[fmt], **source}


def stage_files(stage: Path, preprocess: Path, labels: dict, model_config: Path,
                architecture: dict | None = None) -> None:
    """Copy what the worker needs beside the serialized model: the entry module at the root,
    the whole `handler` package as a package, the model's configs and labels."""
    shutil.copy2(repo.HANDLER_DIR / layout.ENTRY_MODULE, stage / layout.ENTRY_MODULE)
    shutil.copytree(repo.HANDLER_DIR, stage / layout.PACKAGE,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", layout.ENTRY_MODULE))
    shutil.copy2(preprocess, stage / layout.PREPROCESS_CONFIG)
    (stage / layout.LABELS).write_text(json.dumps(labels, indent=1, sort_keys=True))
    shutil.copy2(model_config, stage / layout.MODEL_CONFIG)
    if architecture:
        (stage / layout.ARCHITECTURE).write_text(json.dumps(architecture, indent=2, sort_keys=True))


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


def package(arch: str = repo.DEFAULT_MODEL, checkpoint: str = "default",
            model_name: str | None = None, version: str = "1.0", num_classes: int | None = None,
            preprocess: Path | None = None, labels: Path | None = None,
            model_config: Path | None = None, fmt: str | None = None,
            export_dir: Path = repo.MODEL_STORE, archive_format: str = "default", *,
            fuse_pads: bool = True) -> Path:
    """Export, validate, stage, write the manifest and archive; returns the .mar path.
    `fuse_pads=False` (the benchmark's unfused "before" archive, BENCHMARKS.md; not a model
    setting nor a command-line option) exports the ONNX graph as torch emits it."""
    model_name = model_name or arch
    config_dir = repo.CONFIG_DIR / model_name
    if not config_dir.is_dir():
        config_dir = repo.CONFIG_DIR / repo.DEFAULT_MODEL
    preprocess = Path(preprocess or config_dir / layout.PREPROCESS_CONFIG)
    model_config = Path(model_config or config_dir / layout.MODEL_CONFIG)
    labels_path = Path(labels or config_dir / layout.LABELS)
    config_format = export_format(model_config)  # checks every key of the model config first
    export_settings = model_config_blocks(load_model_config(model_config), model_config)["export"]
    fmt = fmt or config_format
    if fmt not in layout.SERIALIZED_FILE:
        raise ExportError(f"format {fmt!r} is not one of {sorted(layout.SERIALIZED_FILE)}")
    check_export_dir(Path(export_dir), model_name)
    checkpoint_path = resolve_checkpoint(checkpoint, arch)
    # The model's outputs: --num-classes, else the checkpoint's head, else (random init) the labels.
    num_classes = resolve_num_classes(arch, checkpoint_path, num_classes,
                                      fallback=len(read_labels(labels_path)))
    label_map = load_labels(labels_path, num_classes)

    stage = repo.BUILD_DIR / model_name
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    artifact = layout.SERIALIZED_FILE[fmt]
    validation = export_and_validate(arch, checkpoint_path, preprocess, stage / artifact, fmt,
                                     num_classes, export_settings["int8_guard"], fuse_pads)
    stage_files(stage, preprocess, label_map, model_config,
                architecture_record(arch, num_classes, fmt))
    manifest = build_manifest(stage, model_name=model_name, version=version, arch=arch,
                              fmt=fmt, checkpoint=checkpoint_path, validation=validation)
    (stage / layout.MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    print(f"[package] archiving {model_name} v{version} ({archive_format})", flush=True)
    t0 = time.perf_counter()
    mar = run_archiver(stage, model_name, version, artifact, Path(export_dir), archive_format)
    make_reproducible(mar, manifest["build"]["built_at"])  # same inputs -> same bytes
    size = sum(f.stat().st_size for f in mar.rglob("*")) if mar.is_dir() else mar.stat().st_size
    print(f"[package] wrote {mar} ({size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f} s; "
          f"sha256 {hash_file(mar)[:16] if mar.is_file() else '-'}", flush=True)
    return mar


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default=repo.DEFAULT_MODEL,
                        help="efficientnet_lite0 or a torchvision classifier name")
    parser.add_argument("--checkpoint", default="default",
                        help="state-dict file, 'default' (packaged Lite0 weights) or 'none' (random)")
    parser.add_argument("--model-name", help="name served at /predictions/NAME (default: --arch)")
    parser.add_argument("--version", default="1.0", help="model version")
    parser.add_argument("--num-classes", type=int,
                        help="outputs of the classifier (default: the checkpoint's head; random "
                             "init: the number of labels)")
    parser.add_argument("--preprocess", type=Path, help="preprocess.json (default: config/NAME/)")
    parser.add_argument("--labels", type=Path, help="index_to_name.json (default: config/NAME/)")
    parser.add_argument("--model-config", type=Path, help="model-config.yaml (default: config/NAME/)")
    parser.add_argument("--format", choices=sorted(layout.SERIALIZED_FILE),
                        help="serialized model (default: export.format in the model config, else "
                             "torchscript; the default model ships onnx, see BENCHMARKS.md); "
                             "onnx-int8 quantizes and refuses to package unless the accuracy guard "
                             "(export: int8_guard: in the model config) passes")
    parser.add_argument("--export-path", type=Path, default=repo.MODEL_STORE)
    parser.add_argument("--archive-format", choices=["default", "tgz", "no-archive"],
                        default="default")
    args = parser.parse_args(argv)
    try:
        package(args.arch, args.checkpoint, args.model_name, args.version, args.num_classes,
                args.preprocess, args.labels, args.model_config, args.format, args.export_path,
                args.archive_format)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
