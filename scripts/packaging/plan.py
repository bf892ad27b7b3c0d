"""Every input of one packaging run, resolved and checked once into a PackagingPlan.

PackagingInputs holds what the user asked for (package.py's arguments and command line), once.
plan() turns it into that frozen value: the model source (built from the spec once), the model
config (read once: its keys, export settings and format), the export folder, the photo folders,
the checkpoint (read once), the labels and the number of outputs (the classifier head probed
once), the preprocessing. Staging, export, the manifest and the archive (package.py, export.py)
take the plan and read nothing of the user's again.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass
from pathlib import Path

from handler import layout
from handler.head import SOFTMAX, Head, served_classes
from handler.preprocessing import PreprocessConfig
from handler.settings import ConfigError, load_model_config
from scripts import repo
from scripts.ops.labelled import LabelledSetError, PhotoFolder, labelled_folder
from scripts.packaging import code_dir
from scripts.packaging.export import (
    ExportError,
    ExportJob,
    ModelInputs,
    model_inputs,
    resolve_checkpoint,
    source_of,
)
from scripts.packaging.sources import ModelSpec, Source, SourceError


@dataclass(frozen=True)
class PackagingInputs:
    """What the user asks one packaging run for, as given; plan() resolves and checks it.

    `arch`: a name (sources.resolve: efficientnet_lite0, a torchvision classifier, timm:NAME,
    hf:DIR) or a ModelSpec (an architecture file, class and kwargs, a research code folder).
    `checkpoint`: a state-dict file, "default" (the source's own weights) or "none" (random).
    `model_name`: served at /predictions/NAME (default: from the source's name). `version`: the
    archive's. `num_classes`: the classifier's outputs (default: the checkpoint's head, else the
    number of labels). `preprocess`, `labels`, `model_config`: preprocess.json,
    index_to_name.json and model-config.yaml (default: the model's own preprocessing numbers or
    labels where it has them, else config/NAME/). `fmt`: the serialized model (default: the
    model config's export.format). `export_dir`: where the archive goes. `archive_format`:
    torch-model-archiver's (default, tgz, no-archive).

    `preprocess_code`: a module whose preprocess(image) the archive ships and runs at validation
    and serving. `calibration_dir`: the INT8 export's calibration photos (with `eval_dir`, which
    its guard judges on). `eval_dir`, any format: labelled photos the artifact's and the eager
    model's top-1/top-5 are measured on (provenance.json's validation.accuracy); `expect_top1`:
    refuse the archive when this top-1 lies outside the artifact's 95% interval there.
    `fuse_pads=False` (the benchmark's unfused "before" archive, BENCHMARKS.md; not a model
    setting nor a command-line option) exports the ONNX graph as torch emits it. `head`: the
    output head the worker applies (handler/head.py), recorded in architecture.json."""

    arch: str | ModelSpec = repo.DEFAULT_MODEL
    checkpoint: str = "default"
    model_name: str | None = None
    version: str = "1.0"
    num_classes: int | None = None
    preprocess: Path | None = None
    labels: Path | None = None
    model_config: Path | None = None
    fmt: str | None = None
    export_dir: Path = repo.MODEL_STORE
    archive_format: str = "default"
    _: KW_ONLY
    preprocess_code: Path | None = None
    calibration_dir: Path | None = None
    eval_dir: Path | None = None
    fuse_pads: bool = True
    head: Head = SOFTMAX
    expect_top1: float | None = None

    @property
    def spec(self) -> ModelSpec:
        """`arch` as a ModelSpec."""
        return self.arch if isinstance(self.arch, ModelSpec) else ModelSpec(arch=self.arch)


@dataclass(frozen=True)
class PackagingPlan:
    """What one packaging run builds, from what: `job` holds the model (source, checkpoint and
    its state dict, number of outputs) and how it is exported and validated; the rest is what
    the archive ships beside it and where it goes."""

    spec: ModelSpec
    job: ExportJob
    model_name: str
    version: str
    model_config: Path
    labels: Mapping[str, str]
    # preprocess.json as staged: --preprocess, the model's own numbers or the config folder's.
    preprocess: Mapping
    code_files: tuple[Path, ...]
    export_dir: Path
    archive_format: str
    expect_top1: float | None

    @property
    def source(self) -> Source:
        return self.job.model.source

    @property
    def model(self) -> ModelInputs:
        return self.job.model

    @property
    def fmt(self) -> str:
        return self.job.fmt

    @property
    def stage(self) -> Path:
        return self.job.out.parent


def plan(inputs: PackagingInputs, code_files: tuple[Path, ...] = ()) -> PackagingPlan:
    """Resolve and check every input, each once; `code_files`: the research code folder's
    modules (code_files_of). Runs inside the block that imports the model's code
    (package._servable_imports)."""
    spec = inputs.spec
    source = source_of(spec)
    model_name = inputs.model_name or default_model_name(source)
    config_dir = repo.CONFIG_DIR / model_name
    if not config_dir.is_dir():
        config_dir = repo.CONFIG_DIR / repo.DEFAULT_MODEL
    model_config = Path(inputs.model_config or config_dir / layout.MODEL_CONFIG)
    settings = export_settings(model_config)
    fmt = inputs.fmt
    if fmt is not None and fmt not in layout.SERIALIZED_FILE:
        raise ExportError(f"format {fmt!r} is not one of {sorted(layout.SERIALIZED_FILE)}")
    fmt = fmt or settings["format"]
    export_dir = Path(inputs.export_dir)
    check_export_dir(export_dir, model_name)
    int8_photos = int8_photo_dirs(fmt, inputs.calibration_dir, inputs.eval_dir)
    eval_photos = accuracy_photos(inputs.eval_dir, inputs.expect_top1)
    label_map, model = model_labels(source, inputs.labels, config_dir,
                                    resolve_checkpoint(inputs.checkpoint, source), inputs.num_classes)
    raw_preprocess = preprocess_doc(source, inputs.preprocess, config_dir / layout.PREPROCESS_CONFIG,
                                    inputs.preprocess_code)
    stage = repo.BUILD_DIR / model_name
    job = ExportJob(model, stage / layout.PREPROCESS_CONFIG, stage / layout.SERIALIZED_FILE[fmt], fmt,
                    settings["int8_guard"], inputs.fuse_pads, inputs.preprocess_code, int8_photos,
                    inputs.head, eval_photos)
    return PackagingPlan(spec, job, model_name, inputs.version, model_config, label_map,
                         raw_preprocess, tuple(code_files), export_dir, inputs.archive_format,
                         inputs.expect_top1)


def code_files_of(folder: Path | None) -> tuple[Path, ...]:
    """The research code folder's modules (code_dir.code_files); none without a folder."""
    if folder is None:
        return ()
    try:
        return tuple(code_dir.code_files(folder))
    except code_dir.CodeDirError as exc:
        raise ExportError(str(exc)) from exc


def default_model_name(source: Source) -> str:
    """A name TorchServe can serve at /predictions/NAME, from the source's: timm:NAME and hf:DIR
    give NAME and DIR, an architecture file my_net.py:MyNet gives my_net."""
    name = source.name.split(":")[-1] if source.architecture_file is None else source.name.split(".")[0]
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def export_settings(model_config: Path) -> dict:
    """The model config's `export:` block with its defaults; its `format` (how this model is
    served fastest, else TorchScript) checked. The whole config is checked first: a misspelt key
    is an error, not a silent default."""
    try:
        settings = dict(load_model_config(model_config).export)
    except ConfigError as exc:
        raise ExportError(str(exc)) from exc
    if settings["format"] not in layout.SERIALIZED_FILE:
        raise ExportError(f"{model_config}: export.format {settings['format']!r} is not one of "
                          f"{sorted(layout.SERIALIZED_FILE)}")
    return settings


def check_export_dir(export_dir: Path, model_name: str) -> None:
    """torch-model-archiver copies the files into $TMPDIR/NAME and zips that folder: an archive
    exported into the same folder would zip itself as it grows, without end."""
    if Path(export_dir).resolve() == (Path(tempfile.gettempdir()) / model_name).resolve():
        raise ExportError(f"--export-path {export_dir} is torch-model-archiver's scratch folder "
                          f"for {model_name}; choose another folder")


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


def model_labels(source: Source, labels: Path | None, config_dir: Path, checkpoint: Path | None,
                 num_classes: int | None) -> tuple[dict, ModelInputs]:
    """(labels, the model to export): --labels, else the model's own (a Hugging Face config's
    id2label), else the config folder's; their count is the model's number of outputs (two for
    one output), checked against --num-classes or the checkpoint's head now, and against the
    built model at export."""
    own = source.labels() if labels is None else None
    path = Path(labels or config_dir / layout.LABELS)
    found = own if own is not None else read_labels(path)
    where = f"{source.name}'s config" if own is not None else str(path)
    model = model_inputs(source, checkpoint, num_classes, label_count=len(found))
    return load_labels(found, model.num_classes, where), model


def preprocess_doc(source: Source, preprocess: Path | None, default: Path, code: Path | None) -> dict:
    """preprocess.json as the archive ships it, checked: --preprocess, else the model's own
    config (timm's pretrained config, a Hugging Face image processor's), else the model name's
    config folder; with --preprocess-code, its "code" names the staged module."""
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
        raw["code"] = layout.PREPROCESS_CODE
    return raw


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
