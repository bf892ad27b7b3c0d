"""Strict reading of configuration: an unknown or misspelt key is an error that names the key
and the file, never a silent fallback to a default (a model served with the wrong settings).

Also the handler's own settings (the `handler:` block of model-config.yaml) and their defaults.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
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
    "ort_spinning": True,
    "top_k": 5,
    "preprocess_config": layout.PREPROCESS_CONFIG,
    "labels": layout.LABELS,
    "manifest": layout.MANIFEST,
    "on_integrity_mismatch": "refuse",
    # auto: on a GPU, the reduced precision the export validated (handler/device.py); float32 forces FP32
    "precision": "auto",
}
# int8_guard: the INT8 accuracy guard's thresholds (scripts/packaging/quantize.py checks its keys).
EXPORT_DEFAULTS = {"format": "torchscript", "int8_guard": {}, "fuse_pads": True}


class ConfigError(ValueError):
    """A configuration file holds an unknown key or an invalid value."""


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
    return out


def load_model_config(path: str | Path) -> dict:
    """The whole model-config.yaml, checked (TorchServe's keys and our blocks)."""
    import yaml

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"Cannot read {path}: {exc}") from exc
    model_config_blocks(doc, path)
    return doc
