"""The Triton server bundled in the peers' environment (nvidia-pytriton's wheel: tritonserver
2.51 and its Python backend), run directly on a model repository such as
scripts.deploy.triton_repo writes: no pytriton, each model instance a stub process of its own.

The wheel keeps its Python stubs apart (python_backend_stubs/3.11/) and its libraries in
nvidia_pytriton.libs: `server_dir` lays them out as Triton expects (backends/python/ holding the
stub), once per folder, as pytriton itself does before it starts the same binary. Everything
listens on 127.0.0.1 (tritonserver binds 0.0.0.0 unless told).

    from scripts.bench.peers import triton_server
    proc = triton_server.start(repository, port)     # returns once the model is ready
    ...  POST http://127.0.0.1:PORT/v2/models/NAME/infer
    triton_server.stop(proc)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from scripts.bench.peers import peer_env
from scripts.bench.peers.triton_peer import HOST, stop, wait_ready
from scripts.bench.workspace import BENCH
from scripts.ops.serve import free_ports

__all__ = ["server_dir", "start", "stop"]

SERVER_DIR = BENCH / "tritonserver"
STUB = "triton_python_backend_stub"


def _wheel() -> Path:
    """site-packages of the peers' environment (made first when missing)."""
    python = peer_env.ensure(progress=False)
    found = sorted(python.parent.parent.glob("lib/python3*/site-packages/pytriton"))
    if not found:
        raise FileNotFoundError(f"nvidia-pytriton is not installed in {peer_env.VENV}: delete it and "
                                "run python -m scripts.bench.peers.peer_env")
    return found[0].parent


def server_dir(dest: Path = SERVER_DIR) -> Path:
    """bin/tritonserver and backends/python/ (with the 3.11 stub) copied out of the wheel."""
    if (dest / "backends" / "python" / STUB).is_file():
        return dest
    bundled = _wheel() / "pytriton" / "tritonserver"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tritonserver-", dir=dest.parent))
    shutil.copytree(bundled / "bin", tmp / "bin")
    shutil.copytree(bundled / "backends", tmp / "backends")
    shutil.copy2(bundled / "python_backend_stubs" / "3.11" / STUB, tmp / "backends" / "python" / STUB)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def environment() -> dict[str, str]:
    """The server's environment: the peers' python first on PATH (the stub runs it), the wheel's
    libraries, one OpenMP thread per stub (instances x threads = the cores), no bytecode written
    into the repository, and nothing of this checkout on the path (the archive's own handler
    package is what the stubs must import)."""
    base = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH")}
    return {**base, "PATH": f"{peer_env.python().parent}:{base.get('PATH', '')}",
            "LD_LIBRARY_PATH": str(_wheel() / "nvidia_pytriton.libs"), "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def start(repository: Path, port: int, model: str, timeout: float = 180,
          log_path: Path | None = None) -> subprocess.Popen:
    """tritonserver on `repository` in its own session, HTTP on 127.0.0.1:`port`; returns once
    `model` is ready. Its output goes to `log_path` (default: a temporary file), kept on the
    process as `proc.log_path`."""
    server = server_dir()
    grpc_port, metrics_port = [p for p in free_ports(3) if p != port][:2]
    log_path = Path(log_path or tempfile.mkstemp(prefix="tritonserver-", suffix=".log")[1])
    cmd = [str(server / "bin" / "tritonserver"), "--model-repository", str(Path(repository).resolve()),
           "--backend-directory", str(server / "backends"), "--http-address", HOST,
           "--http-port", str(port), "--grpc-address", HOST, "--grpc-port", str(grpc_port),
           "--metrics-address", HOST, "--metrics-port", str(metrics_port), "--allow-gpu-metrics", "false",
           "--exit-timeout-secs", "5"]
    with log_path.open("ab") as log:
        # The stubs put their working directory first on their path: not this checkout's.
        proc = subprocess.Popen(cmd, env=environment(), cwd=server, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    proc.log_path = log_path
    wait_ready(proc, port, model, timeout, "tritonserver")
    return proc
