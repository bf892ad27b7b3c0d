"""Strict reading of configuration: an unknown or misspelt key is an error that names the key
and the file, never a silent fallback to a default (a model served with the wrong settings).

Also the handler's own settings (the `handler:` block of model-config.yaml): their defaults
(HANDLER_DEFAULTS, the one place each is written), the checks of their values, and the
environment variables that override them (HANDLER_ENV), read through the same checks.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from handler import layout

# Keys TorchServe 0.12 reads from a model's model-config.yaml (its frontend's ModelConfig).
TORCHSERVE_MODEL_KEYS = frozenset({
    "minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout", "startupTimeout",
    "deviceType", "deviceIds", "parallelType", "parallelLevel", "torchrun", "useJobTicket",
    "maxRetryTimeoutInSec", "clientTimeoutInMills", "jobQueueSize", "continuousBatching",
    "sequenceBatching", "sequenceMaxIdleMSec", "sequenceTimeoutMSec", "maxSequenceJobQueueSize",
    "maxNumSequence", "asyncCommunication", "useVenv",
})
# Our blocks in model-config.yaml: `handler` (read by the worker), `export` (read by the build).
MODEL_CONFIG_BLOCKS = ("handler", "export")
HANDLER_DEFAULTS = {
    "threads": 1,
    "top_k": 5,
    "preprocess_config": layout.PREPROCESS_CONFIG,
    "labels": layout.LABELS,
    "manifest": layout.MANIFEST,
    # No on_integrity_mismatch: a mismatch always refuses the load, and what may run is the
    # operator's to pin (docs/provenance.md), never the archive's to relax.
    # auto: on a GPU, the reduced precision the export validated (handler/device.py); float32 forces FP32
    "precision": "auto",
    # eager archives only: torch.compile the model at load (slower start, maybe faster forward)
    "compile": False,
    # true: decode every JPEG at full size, whatever preprocess.json's fast_jpeg_draft says (large
    # photos then cost more to decode, and their answers may change: the golden answers,
    # handler/golden.py, refuse the load when they do)
    "full_jpeg_decode": False,
}
# int8_guard: the INT8 accuracy guard's thresholds (scripts/packaging/quantize.py checks its keys).
EXPORT_DEFAULTS = {"format": "torchscript", "int8_guard": {}}
# Environment variable -> the handler setting it overrides: a container can change these
# without rebuilding the archive (whose model-config.yaml is hashed into the manifest).
HANDLER_ENV = {"HANDLER_THREADS": "threads", "HANDLER_FULL_JPEG_DECODE": "full_jpeg_decode"}


class ConfigError(ValueError):
    """A configuration file holds an unknown key or an invalid value."""


def boolean(value: object) -> bool:
    """true/false from YAML (a bool) or the environment ("true", "false", "1", "0")."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in ("true", "false", "1", "0"):
        raise ValueError(f"expected true or false, got {value!r}")
    return text in ("true", "1")


def positive_int(value: object) -> int:
    """An integer >= 1, from YAML (2) or the environment ("2"); not 2.5, True or "two"."""
    # Digits only: int() would also take True, round 2.5 down and read "-1".
    digits = isinstance(value, (int, str)) and not isinstance(value, bool) and str(value).strip().isdigit()
    if not digits or int(value) < 1:
        raise ValueError(f"expected a positive integer, got {value!r}")
    return int(value)


# The handler settings whose values are checked here (the others: where they are used, e.g.
# `precision` in handler/device.py, `manifest` in handler/provenance.py).
HANDLER_CHECKS: dict[str, Callable[[object], object]] = {"threads": positive_int, "top_k": positive_int,
                                                         "compile": boolean, "full_jpeg_decode": boolean}


def check_keys(found: Iterable[str], known: Iterable[str], where: str) -> None:
    """Raise ConfigError for the first key of `found` not in `known`, with the closest known
    spelling. Keys starting with '_' are comments and always allowed."""
    known = sorted(known)
    for key in found:
        if key.startswith("_") or key in known:
            continue
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{where}: unknown key {key!r}{hint}; known keys: {', '.join(known)}")


def model_config_blocks(doc: Mapping | None, where: str | Path = layout.MODEL_CONFIG) -> dict:
    """{'handler': settings with defaults, 'export': settings with defaults} of a model config,
    after checking every key of it."""
    doc = doc or {}
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{where}: expected a mapping of settings, got {type(doc).__name__}")
    check_keys(doc, TORCHSERVE_MODEL_KEYS | set(MODEL_CONFIG_BLOCKS), str(where))
    out = {}
    for block, defaults in (("handler", HANDLER_DEFAULTS), ("export", EXPORT_DEFAULTS)):
        given = doc.get(block) or {}
        if not isinstance(given, dict):
            raise ConfigError(f"{where}: `{block}:` must be a mapping, got {type(given).__name__}")
        check_keys(given, defaults, f"{where} ({block}:)")
        out[block] = {**defaults, **given}
    for key, value in out["handler"].items():
        out["handler"][key] = _checked(key, value, f"{where} (handler: {key})")
    return out


def handler_settings(handler: Mapping, environ: Mapping[str, str] | None = None) -> dict:
    """A checked `handler:` block (model_config_blocks' or ModelConfig's, with its defaults), then
    the overrides of HANDLER_ENV found in `environ` (default: this process's environment), each
    checked."""
    settings = dict(handler)
    environ = os.environ if environ is None else environ
    for var, key in HANDLER_ENV.items():
        if var in environ:
            settings[key] = _checked(key, environ[var], f"environment variable {var} (handler: {key})")
    return settings


def _checked(key: str, value: object, where: str) -> object:
    check = HANDLER_CHECKS.get(key)
    if check is None:
        return value
    try:
        return check(value)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def inside(folder: str | Path, value: object, where: str) -> Path:
    """`value`, a relative path, resolved (symlinks followed) inside `folder`: the one check for
    every path an archive names. Anything else (an absolute path, a `..` out of it, a symlink
    pointing out) is a ConfigError naming `where` and the value."""
    base = Path(folder).resolve()
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a file name inside the model directory, got {value!r}")
    path = (base / value).resolve()  # an absolute value replaces base, and so fails below
    if not path.is_relative_to(base):
        raise ConfigError(f"{where}: {value!r} leads outside the model directory; name a file "
                          "inside the archive, relative to its root")
    return path


@dataclass(frozen=True)
class ModelConfig:
    """A model-config.yaml read and checked once: `doc`, the whole document (TorchServe's keys as
    written); `handler` and `export`, our blocks with their defaults, every key and handler value
    checked. Readers take these blocks rather than checking `doc` again."""

    doc: Mapping
    handler: Mapping
    export: Mapping


def load_model_config(path: str | Path) -> ModelConfig:
    """The whole model-config.yaml, checked (TorchServe's keys and our blocks)."""
    import yaml

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"Cannot read {path}: {exc}") from exc
    blocks = model_config_blocks(doc, path)
    return ModelConfig(doc, blocks["handler"], blocks["export"])
