"""The batching peer: Triton Inference Server 2.51 (through nvidia-pytriton) on the CPU.

Same model.onnx, same preprocessing (handler.preprocessing), same top-5 (handler.responses) as
our archive; Triton's dynamic batcher groups up to --max-batch requests, waiting at most
--delay-us for a batch to fill, and runs --instances model instances, each with its own ONNX
Runtime session of one thread. It runs in the peers' own environment (peer_env: pytriton's
Python stub needs Debian's python3 and numpy<2), so this module's serve path imports only the
standard library, numpy, torch (through handler.*), pytriton and handler.*.

    build/peers/venv/bin/python -m scripts.bench.peers.triton_peer --model-dir DIR --port 8095 \\
        --grpc-port 8096 --metrics-port 8097 --instances 2 --max-batch 4 --delay-us 1000
Or, from our own environment: `start(model_dir, port)` / `url(port, model)` / `stop(proc)`.

The request is the Open Inference Protocol (v2) one loadtest sends: one BYTES input "image",
the photo in base64, shape [1, 1]. A batching Triton model (max_batch_size > 0) requires the
batch dimension in every request: shape [1] is refused with 400 ("Expected [-1,1], got [1]"),
and a reshape in the model config changes only what the model sees, not what the client must
send. Our handler takes [1, 1] as one image too, so both servers get the same bytes. The answer
has three outputs, labels (BYTES), probabilities (FP32) and indices (INT64), each [1, 5].

A bad image fails its whole batch: pytriton has no per-request error for a non-decoupled model
(an exception in the callable becomes one TritonModelException for every request Triton
batched with it), and Triton answers each of them 500 with the traceback as {"error"}. The
server stays up and the next batch is answered; a neighbour batched with a bad image is lost.

The statistics API (GET /v2/models/NAME/stats: inference_count against execution_count, i.e.
how well requests batched) is left open; pytriton would put it behind a random access token.
Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import base64
import json
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

# The peer stops and is awaited as the tritonserver it runs: its own process group, v2 health.
from scripts.deploy.triton_server import HOST, wait_ready
from scripts.deploy.triton_server import stop as stop

MODEL = "efficientnet_lite0"
TOP_K = 5


def url(port: int, model: str = MODEL) -> str:
    """The v2 infer URL of the peer on `port`."""
    return f"http://{HOST}:{port}/v2/models/{model}/infer"


# ---- the serve path (the peers' environment) ----

def make_infer(model_dir: Path, model: str) -> Callable:
    """One model instance: its own ONNX Runtime session (1 thread) behind a @batch callable
    that answers a batch of base64 photos with their top-5 labels, probabilities, indices."""
    import numpy as np
    import torch
    from pytriton.decorators import batch

    from handler import layout, responses
    from handler.preprocessing import PreprocessConfig, preprocess_bytes
    from handler.runner import load_runner

    serialized = json.loads((model_dir / layout.ARCHIVER_MANIFEST).read_text())["model"]["serializedFile"]
    runner = load_runner(model_dir / serialized, threads=1)
    cfg = PreprocessConfig.load(model_dir / layout.PREPROCESS_CONFIG)
    labels = json.loads((model_dir / layout.LABELS).read_text())
    version = json.loads((model_dir / layout.MANIFEST).read_text())["model"]["version"]

    @batch
    def infer(image: np.ndarray) -> dict[str, np.ndarray]:
        # image: [batch, 1] objects, each the base64 text of one photo. Any failure raises and
        # fails the whole batch (pytriton has no per-request error): see the module docstring.
        tensors = [preprocess_bytes(base64.b64decode(text, validate=True), cfg)
                   for text in image.reshape(-1)]
        probs, indices = responses.top_k(runner(torch.stack(tensors)), TOP_K)
        preds = [responses.prediction(p, i, labels, model, version)["predictions"]
                 for p, i in zip(probs, indices)]
        return {"labels": np.array([[p["label"].encode() for p in row] for row in preds], dtype=object),
                "probabilities": np.array([[p["probability"] for p in row] for row in preds], np.float32),
                "indices": np.array([[p["index"] for p in row] for row in preds], np.int64)}

    return infer


def serve(model_dir: Path, port: int, grpc_port: int, metrics_port: int, model: str = MODEL,
          instances: int = 2, max_batch: int = 4, delay_us: int = 1000) -> None:
    """Run Triton on 127.0.0.1 until SIGTERM or SIGINT (pytriton then stops Triton and removes
    its workspace)."""
    import numpy as np
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import DEFAULT_PROTECTED_ENDPOINTS, Triton, TritonConfig, TritonSecurityConfig

    config = TritonConfig(http_address=HOST, http_port=port, grpc_address=HOST, grpc_port=grpc_port,
                          metrics_address=HOST, metrics_port=metrics_port, allow_metrics=True,
                          allow_gpu_metrics=False, exit_timeout_secs=5, log_verbose=0)
    security = TritonSecurityConfig(
        restricted_endpoints=[e for e in DEFAULT_PROTECTED_ENDPOINTS if e != "statistics"])
    print(f"[triton-peer] loading {instances} instance(s) of {model} from {model_dir}", flush=True)
    infers = [make_infer(model_dir, model) for _ in range(instances)]
    signal.signal(signal.SIGTERM, _interrupt)  # serve() stops cleanly on KeyboardInterrupt
    with Triton(config=config, security_config=security) as triton:
        triton.bind(
            model_name=model, infer_func=infers,
            inputs=[Tensor(name="image", dtype=np.bytes_, shape=(1,))],
            outputs=[Tensor(name="labels", dtype=np.bytes_, shape=(TOP_K,)),
                     Tensor(name="probabilities", dtype=np.float32, shape=(TOP_K,)),
                     Tensor(name="indices", dtype=np.int64, shape=(TOP_K,))],
            config=ModelConfig(max_batch_size=max_batch,
                               batcher=DynamicBatcher(max_queue_delay_microseconds=delay_us)))
        print(f"[triton-peer] serving {url(port, model)} (max batch {max_batch}, "
              f"delay {delay_us} us)", flush=True)
        triton.serve()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True, help="an unpacked archive of ours")
    parser.add_argument("--port", type=int, required=True, help="HTTP port on 127.0.0.1")
    parser.add_argument("--grpc-port", type=int, required=True, help="gRPC port on 127.0.0.1")
    parser.add_argument("--metrics-port", type=int, required=True, help="Prometheus port on 127.0.0.1")
    parser.add_argument("--model", default=MODEL, help="the model's name in the URL")
    parser.add_argument("--instances", type=int, default=2, help="model instances, 1 ORT thread each")
    parser.add_argument("--max-batch", type=int, default=4, help="the dynamic batcher's largest batch")
    parser.add_argument("--delay-us", type=int, default=1000, help="longest wait for a batch to fill")
    args = parser.parse_args(argv)
    serve(args.model_dir.resolve(), args.port, args.grpc_port, args.metrics_port,
          args.model, args.instances, args.max_batch, args.delay_us)
    return 0


# ---- from our own environment ----

def start(model_dir: Path, port: int, instances: int = 2, max_batch: int = 4, delay_us: int = 1000,
          timeout: float = 180, model: str = MODEL, log_path: Path | None = None) -> subprocess.Popen:
    """The peer in the peers' environment, in its own session; returns once Triton and the
    model are ready. Its output goes to `log_path` (default: a temporary file), kept on the
    process as `proc.log_path`."""
    from scripts.bench.peers import peer_env
    from scripts.ops.serve import free_ports

    grpc_port, metrics_port = [p for p in free_ports(3) if p != port][:2]
    log_path = Path(log_path or tempfile.mkstemp(prefix="triton-peer-", suffix=".log")[1])
    cmd = [str(peer_env.ensure()), "-m", "scripts.bench.peers.triton_peer", "--model-dir", str(model_dir),
           "--port", str(port), "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port),
           "--model", model, "--instances", str(instances), "--max-batch", str(max_batch),
           "--delay-us", str(delay_us)]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(cmd, env=peer_env.env(), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    proc.log_path = log_path
    wait_ready(proc, port, model, timeout, "the Triton peer")
    return proc


if __name__ == "__main__":
    sys.exit(main())
