"""The archives the benchmark serves: ours (a private copy of the shipped .mar), TorchServe's
stock image_classifier over the same validated TorchScript export, and variants of ours with
changed model settings or an unfused ONNX graph (the levers)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

from scripts import repo
from scripts.bench.workspace import BENCH, CFG_DIR, STORE
from scripts.packaging import package
from scripts.packaging.export import export_and_validate, resolve_checkpoint
from scripts.packaging.plan import PackagingInputs


def ours_mar(name: str = repo.DEFAULT_MODEL) -> Path:
    """A private copy of the shipped archive (others may rebuild model_store/ meanwhile)."""
    src = repo.MODEL_STORE / f"{name}.mar"
    if not src.is_file():
        package.package(PackagingInputs())
    STORE.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy2(src, STORE / src.name))


def scripted(arch: str, checkpoint: str) -> Path:
    """The validated TorchScript export the stock handler serves."""
    out = BENCH / f"{arch}_ts" / "model.pt"
    if not out.is_file():
        export_and_validate(arch, resolve_checkpoint(checkpoint, arch), CFG_DIR / "preprocess.json", out)
    return out


def stock_mar(model_pt: Path, name: str) -> Path:
    """torch-model-archiver --handler image_classifier, no config file: TorchServe's defaults."""
    STORE.mkdir(parents=True, exist_ok=True)
    cmd = [str(Path(sys.executable).parent / "torch-model-archiver"), "--model-name", name,
           "--version", "1.0", "--serialized-file", str(model_pt), "--handler", "image_classifier",
           "--extra-files", str(CFG_DIR / "index_to_name.json"), "--export-path", str(STORE), "--force"]
    subprocess.run(cmd, check=True)
    return STORE / f"{name}.mar"


def variant_mar(name: str, settings: dict, fmt: str | None = None, arch: str = repo.DEFAULT_MODEL,
                checkpoint: str = "default", fuse_pads: bool = True) -> Path:
    """Our archive with model-config.yaml changed by `settings` ({'handler': {...}} merges);
    `fuse_pads=False`: with the ONNX graph as torch emits it (no model setting asks for that)."""
    config = yaml.safe_load((CFG_DIR / "model-config.yaml").read_text())
    for key, value in settings.items():
        if isinstance(value, dict):
            config.setdefault(key, {}).update(value)
        else:
            config[key] = value
    path = BENCH / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return package.package(PackagingInputs(arch, checkpoint, model_name=name, model_config=path, fmt=fmt,
                                           export_dir=STORE, fuse_pads=fuse_pads))


def unpack(mar: Path) -> Path:
    out = BENCH / "unpacked" / mar.stem
    shutil.rmtree(out, ignore_errors=True)
    with zipfile.ZipFile(mar) as zf:
        zf.extractall(out)
    return out

