"""The archive's Triton model repository (scripts.deploy.triton_repo) served locally: the
`tritonserver` 2.51 bundled in nvidia-pytriton's wheel, with its Python backend, run directly on
the repository: no pytriton, each model instance a stub process of its own.

The wheel must be installed in an environment whose python the stub can run (Debian's python3
3.11, numpy<2: the benchmark's peers' environment, build/peers/venv, is one); `python` names
that environment's interpreter. The wheel keeps its Python stubs apart
(python_backend_stubs/3.11/) and its libraries in nvidia_pytriton.libs: `server_dir` lays them
out as Triton expects (backends/python/ holding the stub), once per folder, as pytriton itself
does before it starts the same binary. Everything listens on 127.0.0.1 (tritonserver binds
0.0.0.0 unless told).

    from scripts.deploy import triton_server
    proc = triton_server.start(repository, port, model, python)   # returns once the model is ready
    ...  POST http://127.0.0.1:PORT/v2/models/NAME/infer
    triton_server.stop(proc)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from scripts import repo

__all__ = ["HOST", "server_dir", "start", "stop", "tail", "wait_ready"]

HOST = "127.0.0.1"
SERVER_DIR = repo.BUILD_DIR / "tritonserver"
STUB = "triton_python_backend_stub"


def _wheel(python: Path) -> Path:
    """site-packages of the environment of `python`, where nvidia-pytriton is installed."""
    found = sorted(Path(python).parent.parent.glob("lib/python3*/site-packages/pytriton"))
    if not found:
        raise FileNotFoundError(f"nvidia-pytriton is not installed in the environment of {python}")
    return found[0].parent


def server_dir(python: Path, dest: Path = SERVER_DIR) -> Path:
    """bin/tritonserver and backends/python/ (with the 3.11 stub) copied out of the wheel."""
    if (dest / "backends" / "python" / STUB).is_file():
        return dest
    bundled = _wheel(python) / "pytriton" / "tritonserver"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tritonserver-", dir=dest.parent))
    shutil.copytree(bundled / "bin", tmp / "bin")
    shutil.copytree(bundled / "backends", tmp / "backends")
    shutil.copy2(bundled / "python_backend_stubs" / "3.11" / STUB, tmp / "backends" / "python" / STUB)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def environment(python: Path) -> dict[str, str]:
    """The server's environment: `python`'s folder first on PATH (the stub runs it), the wheel's
    libraries, one OpenMP thread per stub (instances x threads = the cores), no bytecode written
    into the repository, and nothing of this checkout on the path (the archive's own handler
    package is what the stubs must import)."""
    base = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH")}
    return {**base, "PATH": f"{Path(python).parent}:{base.get('PATH', '')}",
            "LD_LIBRARY_PATH": str(_wheel(python) / "nvidia_pytriton.libs"), "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def start(repository: Path, port: int, model: str, python: Path, timeout: float = 180,
          log_path: Path | None = None) -> subprocess.Popen:
    """tritonserver on `repository` in its own session, HTTP on 127.0.0.1:`port`, its stubs run
    by `python` (an environment with nvidia-pytriton); returns once `model` is ready. Its output
    goes to `log_path` (default: a temporary file), kept on the process as `proc.log_path`."""
    # Here, not at the top: the peers' environment imports this module's wait_ready and stop
    # and has none of the runtime's packages that scripts.ops.serve needs.
    from scripts.ops.serve import free_ports

    server = server_dir(python)
    grpc_port, metrics_port = [p for p in free_ports(3) if p != port][:2]
    log_path = Path(log_path or tempfile.mkstemp(prefix="tritonserver-", suffix=".log")[1])
    cmd = [str(server / "bin" / "tritonserver"), "--model-repository", str(Path(repository).resolve()),
           "--backend-directory", str(server / "backends"), "--http-address", HOST,
           "--http-port", str(port), "--grpc-address", HOST, "--grpc-port", str(grpc_port),
           "--metrics-address", HOST, "--metrics-port", str(metrics_port), "--allow-gpu-metrics", "false",
           "--exit-timeout-secs", "5"]
    with log_path.open("ab") as log:
        # The stubs put their working directory first on their path: not this checkout's.
        proc = subprocess.Popen(cmd, env=environment(python), cwd=server, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    proc.log_path = log_path
    wait_ready(proc, port, model, timeout, "tritonserver")
    return proc


def wait_ready(proc: subprocess.Popen, port: int, model: str, timeout: float, what: str) -> None:
    """Return once Triton on `port` and `model` are ready (v2 health routes); else stop `proc`
    and raise, quoting the end of its log (`proc.log_path`)."""
    base = f"http://{HOST}:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; its last lines "
                               f"({proc.log_path}):\n{tail(proc.log_path)}")
        if _ready(f"{base}/v2/health/ready") and _ready(f"{base}/v2/models/{model}/ready"):
            return
        time.sleep(0.5)
    stop(proc)
    raise TimeoutError(f"{what} was not ready within {timeout:.0f} s; its last lines "
                       f"({proc.log_path}):\n{tail(proc.log_path)}")


def _ready(address: str) -> bool:
    try:
        with urllib.request.urlopen(address, timeout=2) as resp:
            return resp.status == 200
    except (OSError, urllib.error.HTTPError):
        return False


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log file ('' when there is none)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop the server: SIGTERM to its process group (tritonserver, its Python stubs, and a python
    parent where one started them, as pytriton does), SIGKILL to what is left after `grace` s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:  # tritonserver or a stub may outlive the python parent
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(5)
