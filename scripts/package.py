"""Package a checkpoint into a TorchServe model archive (.mar) with a provenance manifest.

Steps: export + validate (scripts/export.py) -> stage handler modules, architecture file,
preprocessing config, labels, model config -> write provenance.json (SHA-256 of every file,
versions, validation) -> torch-model-archiver -> model_store/NAME.mar

Example (the default model):
    python scripts/package.py
Your own checkpoint:
    python scripts/package.py --arch resnet50 --checkpoint resnet50_cats.pth \\
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

import paths
from export import ExportError, export_and_validate, resolve_checkpoint, resolve_num_classes
from manifest import PROGRESS_MIN_BYTES, build_manifest, hash_file
from reproducible import make_reproducible

HANDLER_MODULES = ["batch.py", "preprocessing.py", "payload.py", "runner.py", "provenance.py",
                   "handler_metrics.py"]
ARTIFACT_NAME = {"torchscript": "model.pt", "onnx": "model.onnx"}
ARCHITECTURE_FILE = "architecture.json"
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

    if arch == paths.DEFAULT_MODEL:
        source = {"source": "model.py", "class": "EfficientNetLite0"}
    else:
        source = {"source": "torchvision", "torchvision_version": metadata.version("torchvision"),
                  "builder": f"torchvision.models.get_model({arch!r}, weights=None, "
                             f"num_classes={num_classes})"}
    return {"arch": arch, "num_classes": num_classes, "format": fmt,
            "serialized_file": ARTIFACT_NAME[fmt], **source}


def stage_files(stage: Path, arch: str, preprocess: Path, labels: dict, model_config: Path,
                architecture: dict | None = None) -> None:
    """Copy what the worker needs beside the serialized model."""
    for name in HANDLER_MODULES:
        shutil.copy2(paths.HANDLER_DIR / name, stage / name)
    shutil.copy2(paths.HANDLER_DIR / "handler.py", stage / "handler.py")
    if arch == paths.DEFAULT_MODEL:
        shutil.copy2(paths.HANDLER_DIR / "model.py", stage / "model.py")  # the architecture file
    shutil.copy2(preprocess, stage / "preprocess.json")
    (stage / "index_to_name.json").write_text(json.dumps(labels, indent=1, sort_keys=True))
    shutil.copy2(model_config, stage / "model-config.yaml")
    if architecture:
        (stage / ARCHITECTURE_FILE).write_text(json.dumps(architecture, indent=2, sort_keys=True))


def export_format(model_config: Path) -> str:
    """The model config's `export.format` (how this model is served fastest), else TorchScript."""
    import yaml

    try:
        fmt = (yaml.safe_load(Path(model_config).read_text()) or {}).get("export", {}).get("format")
    except (OSError, yaml.YAMLError, AttributeError) as exc:
        raise ExportError(f"Cannot read export.format from {model_config}: {exc}") from exc
    fmt = fmt or "torchscript"
    if fmt not in ARTIFACT_NAME:
        raise ExportError(f"{model_config}: export.format {fmt!r} is not one of {sorted(ARTIFACT_NAME)}")
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
    extra = sorted(p.name for p in stage.iterdir()
                   if p.name not in (artifact, "handler.py", "model-config.yaml"))
    check_export_dir(export_dir, model_name)
    export_dir.mkdir(parents=True, exist_ok=True)
    cmd = [str(Path(sys.executable).parent / "torch-model-archiver"),
           "--model-name", model_name, "--version", version,
           "--serialized-file", str(stage / artifact), "--handler", str(stage / "handler.py"),
           "--extra-files", ",".join(str(stage / name) for name in extra),
           "--config-file", str(stage / "model-config.yaml"),
           "--export-path", str(export_dir), "--archive-format", archive_format, "--force"]
    out = export_dir / f"{model_name}{ARCHIVE_SUFFIX[archive_format]}"
    total = sum(p.stat().st_size for p in stage.iterdir() if p.is_file())
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


def package(arch: str = paths.DEFAULT_MODEL, checkpoint: str = "default",
            model_name: str | None = None, version: str = "1.0", num_classes: int | None = None,
            preprocess: Path | None = None, labels: Path | None = None,
            model_config: Path | None = None, fmt: str | None = None,
            export_dir: Path = paths.MODEL_STORE, archive_format: str = "default") -> Path:
    """Export, validate, stage, write the manifest and archive; returns the .mar path."""
    model_name = model_name or arch
    config_dir = paths.CONFIG_DIR / model_name
    if not config_dir.is_dir():
        config_dir = paths.CONFIG_DIR / paths.DEFAULT_MODEL
    preprocess = Path(preprocess or config_dir / "preprocess.json")
    model_config = Path(model_config or config_dir / "model-config.yaml")
    labels_path = Path(labels or config_dir / "index_to_name.json")
    fmt = fmt or export_format(model_config)
    check_export_dir(Path(export_dir), model_name)
    checkpoint_path = resolve_checkpoint(checkpoint, arch)
    # The model's outputs: --num-classes, else the checkpoint's head, else (random init) the labels.
    num_classes = resolve_num_classes(arch, checkpoint_path, num_classes,
                                      fallback=len(read_labels(labels_path)))
    label_map = load_labels(labels_path, num_classes)

    stage = paths.BUILD_DIR / model_name
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    artifact = ARTIFACT_NAME[fmt]
    validation = export_and_validate(arch, checkpoint_path, preprocess, stage / artifact, fmt,
                                     num_classes)
    stage_files(stage, arch, preprocess, label_map, model_config,
                architecture_record(arch, num_classes, fmt))
    manifest = build_manifest(stage, model_name=model_name, version=version, arch=arch,
                              fmt=fmt, checkpoint=checkpoint_path, validation=validation)
    (stage / "provenance.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
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
    parser.add_argument("--arch", default=paths.DEFAULT_MODEL,
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
    parser.add_argument("--format", choices=sorted(ARTIFACT_NAME),
                        help="serialized model (default: export.format in the model config, else "
                             "torchscript; the default model ships onnx, see BENCHMARKS.md)")
    parser.add_argument("--export-path", type=Path, default=paths.MODEL_STORE)
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
