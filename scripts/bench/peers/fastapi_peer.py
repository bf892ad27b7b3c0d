"""The peer a user might write instead of TorchServe: FastAPI + uvicorn, no batching.

Same model.onnx, same preprocessing (handler.preprocessing), same JSON (handler.responses) as
our archive; uvicorn runs WORKERS processes of one ORT thread each. A dev dependency, used only
by the benchmark (scripts/bench/load/main.py) and its smoke test.

    PEER_MODEL_DIR=build/bench/unpacked/efficientnet_lite0 \\
        uvicorn scripts.bench.peers.fastapi_peer:app --host 127.0.0.1 --port 8090 --workers 2
Or, from Python: `start(model_dir, port)` / `stop(proc)`.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint's annotations at run time,
# and `Request` is imported inside create_app, where a string annotation would not resolve.
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from handler import layout

MODEL_ENV = "PEER_MODEL_DIR"
ROUTE = "/predictions/{name}"


def create_app(model_dir: Path):
    """The FastAPI app over an unpacked archive's model, preprocessing config and labels."""
    import torch
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    from handler import responses
    from handler.errors import InputError
    from handler.preprocessing import PreprocessConfig, preprocess_bytes
    from handler.runner import load_runner

    serialized = json.loads((model_dir / layout.ARCHIVER_MANIFEST).read_text())["model"]["serializedFile"]
    runner = load_runner(model_dir / serialized, threads=1)
    cfg = PreprocessConfig.load(model_dir / layout.PREPROCESS_CONFIG)
    labels = json.loads((model_dir / layout.LABELS).read_text())
    provenance = json.loads((model_dir / layout.MANIFEST).read_text())["model"]
    app = FastAPI()

    @app.post(ROUTE)
    async def predict(name: str, request: Request) -> JSONResponse:
        body = await request.body()
        try:
            tensor = preprocess_bytes(body, cfg)
        except InputError as exc:
            return JSONResponse(exc.to_json(), status_code=exc.status)
        probs, indices = responses.top_k(runner(tensor[None]), 5)
        return JSONResponse(responses.prediction(probs[0], indices[0], labels, name,
                                                 provenance["version"]))

    @app.get("/ping")
    async def ping() -> dict:
        return {"status": "Healthy"}

    torch.set_num_threads(1)
    return app


def __getattr__(name: str):  # `uvicorn scripts.bench.peers.fastapi_peer:app` builds the app in each worker
    if name == "app":
        return create_app(Path(os.environ[MODEL_ENV]))
    raise AttributeError(name)


def start(model_dir: Path, port: int, workers: int = 2, timeout: float = 120.0) -> subprocess.Popen:
    """uvicorn with `workers` processes on 127.0.0.1:`port`; returns once /ping answers."""
    env = {**os.environ, MODEL_ENV: str(model_dir), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "scripts.bench.peers.fastapi_peer:app",
                             "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
                             "--log-level", "warning", "--no-access-log"], env=env,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the FastAPI peer exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                # every worker must have loaded its model: one ping answered proves one worker
                time.sleep(2)
                return proc
        except OSError:
            time.sleep(0.5)
    stop(proc)
    raise TimeoutError(f"the FastAPI peer did not answer within {timeout:.0f} s")


def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop uvicorn (SIGTERM to its own process group: the master and its workers)."""
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
