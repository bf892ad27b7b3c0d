"""A verified archive as a Triton model repository: the same files, served by Triton's Python
backend instead of TorchServe (docs/deployment.md says how to run it, and what changes).

    python -m scripts.deploy.triton_repo model_store/efficientnet_lite0.mar triton_repo/
    tritonserver --model-repository triton_repo/

writes OUT/NAME/ (NAME: the archive's name without .mar):

    config.pbtxt   backend "python"; instance_group [{count: N, kind: KIND_CPU}] (N stub
                   processes: the archive's minWorkers); dynamic_batching with the archive's
                   batchSize and maxBatchDelay (model-config.yaml); input `image` BYTES, outputs
                   `labels`, `probabilities`, `indices` (our Open Inference answer); the
                   manifest pair checked here, as the parameter `archive_manifests`
    1/model.py     scripts/deploy/triton_model.py: holds NAME/ to that manifest, then serves the
                   archive's preprocessing, runner and top-k
    the archive's files, unpacked as TorchServe's copy is (scripts/ops/verified_copy.py): the
                   archive is copied while hashed, held to ARCHIVE_SHA256 / ARCHIVE_VERIFY_KEY
                   where set (scripts/ops/pins.py), checked as a zip and by its entries' names,
                   unpacked and held to its manifest; nothing is written to OUT/NAME unless all pass.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from handler import integrity, layout
from handler.settings import ConfigError, load_model_config
from scripts.ops import pins

TEMPLATE = Path(__file__).resolve().with_name("triton_model.py")
VERSION = "1"
# TorchServe's own defaults for a model-config.yaml that leaves them out (STACK: model defaults).
TORCHSERVE_DEFAULTS = {"batchSize": 1, "maxBatchDelay": 100, "minWorkers": 1}


@dataclass(frozen=True)
class Batching:
    """What config.pbtxt asks of Triton: stub processes, largest batch, longest wait for one."""

    instances: int
    max_batch: int
    delay_us: int


def batching_of(model_config: Mapping, **overrides: int | None) -> Batching:
    """The archive's TorchServe settings as Triton's (maxBatchDelay ms -> microseconds), each
    replaced by an override that is not None (instances, max_batch, delay_us)."""
    ts = {**TORCHSERVE_DEFAULTS, **{k: v for k, v in model_config.items() if k in TORCHSERVE_DEFAULTS}}
    chosen = {"instances": int(ts["minWorkers"]), "max_batch": int(ts["batchSize"]),
              "delay_us": int(ts["maxBatchDelay"]) * 1000}
    chosen.update({k: int(v) for k, v in overrides.items() if v is not None})
    if chosen["instances"] < 1 or chosen["max_batch"] < 1 or chosen["delay_us"] < 0:
        raise ConfigError(f"instances and max_batch must be >= 1 and delay_us >= 0, got {chosen}")
    return Batching(**chosen)


def model_config_pbtxt(name: str, batching: Batching, top_k: int, manifests: str) -> str:
    """config.pbtxt of the Python-backend model (strings quoted as JSON, which protobuf's text
    format reads the same for these characters)."""
    outputs = ",\n".join(f'  {{ name: "{out}", data_type: {kind}, dims: [ {top_k} ] }}'
                         for out, kind in (("labels", "TYPE_STRING"), ("probabilities", "TYPE_FP32"),
                                           ("indices", "TYPE_INT64")))
    return (f"name: {json.dumps(name)}\n"
            'backend: "python"\n'
            f"max_batch_size: {batching.max_batch}\n"
            'input [\n  { name: "image", data_type: TYPE_STRING, dims: [ 1 ] }\n]\n'
            f"output [\n{outputs}\n]\n"
            f"instance_group [ {{ count: {batching.instances}, kind: KIND_CPU }} ]\n"
            f"dynamic_batching {{ max_queue_delay_microseconds: {batching.delay_us} }}\n"
            f'parameters {{ key: "archive_manifests" value: {{ string_value: {json.dumps(manifests)} }} }}\n')


def write_repository(mar: Path, out: Path, environ: Mapping[str, str] | None = None,
                     **overrides: int | None) -> Path:
    """Write OUT/NAME from the archive `mar` (see the module docstring); returns OUT/NAME.
    pins.PinError when the archive fails a check, FileExistsError when OUT/NAME exists."""
    mar, out = Path(mar).resolve(), Path(out).resolve()
    name = mar.stem
    target = out / name
    if target.exists():
        raise FileExistsError(f"{target} exists: remove it, or write the repository to another folder")
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out))
    try:
        checked = pins.verified_copies(mar.parent, f"{name}={mar.name}", os.environ if environ is None
                                       else environ, staging / "store")
        model_dir = staging / "store" / name
        config = load_model_config(model_dir / layout.MODEL_CONFIG)
        text = model_config_pbtxt(name, batching_of(config.doc, **overrides), config.handler["top_k"],
                                  checked.env[integrity.MANIFESTS_ENV])
        (model_dir / "config.pbtxt").write_text(text)
        (model_dir / VERSION).mkdir(mode=0o700)
        shutil.copyfile(TEMPLATE, model_dir / VERSION / "model.py")
        model_dir.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mar", type=Path, help="the archive, e.g. model_store/efficientnet_lite0.mar")
    parser.add_argument("out", type=Path, help="the model repository folder (NAME/ is written in it)")
    parser.add_argument("--instances", type=int, help="stub processes (default: the archive's minWorkers)")
    parser.add_argument("--max-batch", type=int, help="largest batch (default: the archive's batchSize)")
    parser.add_argument("--delay-us", type=int, help="longest wait for a batch, microseconds "
                                                     "(default: the archive's maxBatchDelay)")
    args = parser.parse_args(argv)
    try:
        target = write_repository(args.mar, args.out, instances=args.instances, max_batch=args.max_batch,
                                  delay_us=args.delay_us)
    except (pins.PinError, ConfigError, FileExistsError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {target} (serve it: tritonserver --model-repository {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
