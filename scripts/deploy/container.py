"""The runtime image (`make image`) run as the README runs it: read-only root filesystem, a
tmpfs for /tmp only (run/ links there), ports published on loopback only, the bearer keys copied
out of the container's tmpfs. Used by the tests (tests/support/container.py) and by the benchmark's
container row (scripts/bench/load/services.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import requests

from scripts import repo
from scripts.ops.serve import WARM_UP_PENDING, free_ports
from scripts.ops.server_config import DEFAULT_PORTS, KEY_FILE, loopback_url, write_private
from scripts.ops.torchserve_http import TorchServeClient

IMAGE_NAME = "localhost/image-classifier-service"
APP_DIR = "/home/model-server/app"
CONTAINER_PORTS = DEFAULT_PORTS  # TorchServe's, inside the container
# podman on this kind of host: runc (crun refuses hybrid cgroup v1) and explicit ulimits (as the Makefile).
PODMAN_GLOBAL = ["--runtime", "runc"]
PODMAN_LIMITS = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096"]


def image_tag() -> str:
    version = tomllib.loads((repo.ROOT / "pyproject.toml").read_text())["project"]["version"]
    return f"{IMAGE_NAME}:{version}"


def engine() -> list[str]:
    """The engine's command: podman if installed, else a docker whose daemon answers."""
    if shutil.which("podman"):
        return ["podman", *PODMAN_GLOBAL]
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        return ["docker"]
    raise RuntimeError("no container engine (podman, or docker with a daemon): run `make image`")


def run_limits(cmd: list[str]) -> list[str]:
    return PODMAN_LIMITS if cmd[0] == "podman" else []


def engine_run(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([*engine(), *args], capture_output=True, text=True, timeout=timeout, check=check)


@dataclass
class Container:
    name: str
    ports: tuple[int, int, int]
    key_dir: Path

    @property
    def client(self) -> TorchServeClient:
        return TorchServeClient(*map(loopback_url, self.ports),
                                key_file=self.key_dir / KEY_FILE, timeout=60)

    def exec(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return engine_run("exec", self.name, *cmd, timeout=timeout, check=False)

    def copy_keys(self) -> None:
        """The bearer keys live on the container's tmpfs: copy the current file out."""
        out = self.exec("cat", f"{APP_DIR}/run/{KEY_FILE}")
        if out.returncode:
            raise FileNotFoundError(f"no key file in {self.name} yet: {out.stderr.strip()}")
        write_private(self.key_dir / KEY_FILE, out.stdout)

    def key_file_mode_and_owner(self) -> tuple[str, str]:
        """(octal mode, owner name) of run/key_file.json inside the container."""
        out = self.exec("stat", "-L", "-c", "%a %U", f"{APP_DIR}/run/{KEY_FILE}")
        if out.returncode:
            raise FileNotFoundError(f"no key file in {self.name}: {out.stderr.strip()}")
        mode, owner = out.stdout.split()
        return mode, owner

    def command_lines(self) -> dict[int, str]:
        """{pid: command line} of every process in the container, read from /proc."""
        out = self.exec("sh", "-c", "for d in /proc/[0-9]*; do printf '%s ' \"${d#/proc/}\"; "
                                    "tr '\\0' ' ' < \"$d/cmdline\" 2>/dev/null; echo; done")
        lines = {}
        for line in out.stdout.splitlines():
            pid, _, cmd = line.partition(" ")
            if pid.isdigit():
                lines[int(pid)] = cmd
        return lines

    def process_alive(self, pid_file: str) -> bool:
        """Whether the process `pid_file` (under run/) recorded still runs in the container."""
        return self.exec("python", "-m", "scripts.ops.lifecycle", "alive",
                         f"{APP_DIR}/run/{pid_file}").returncode == 0

    def logs(self) -> str:
        return engine_run("logs", self.name, check=False).stdout[-4000:]

    def state(self) -> dict:
        return json.loads(engine_run("inspect", self.name).stdout)[0]["State"]

    def wait_ready(self, model: str, min_ready: int = 1, timeout: float = 240) -> float:
        """Seconds until `min_ready` workers are READY and the entrypoint's warm-up is over (what
        the image's HEALTHCHECK waits for), the keys copied out on the way."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if not self.state().get("Running"):
                raise RuntimeError(f"container {self.name} exited:\n{self.logs()}")
            try:
                self.copy_keys()
                warmed = self.exec("test", "!", "-e", f"{APP_DIR}/run/{WARM_UP_PENDING}").returncode == 0
                if self.client.ready_workers(model) >= min_ready and warmed:
                    return time.monotonic() - t0
            except (OSError, requests.RequestException, ValueError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{model}: fewer than {min_ready} READY workers in {self.name} after "
                           f"{timeout:.0f} s:\n{self.logs()}")

    def remove(self) -> None:
        engine_run("rm", "-f", "-t", "5", self.name, check=False)


def run_container(name: str, key_dir: Path, image: str | None = None) -> Container:
    """Start the image detached, as the README runs it, on free loopback ports."""
    image = image or image_tag()
    cmd = engine()
    if subprocess.run([*cmd, "image", "inspect", image], capture_output=True).returncode:
        raise RuntimeError(f"image {image} is missing: run `make image`")
    subprocess.run([*cmd, "rm", "-f", name], capture_output=True)  # one left by an aborted run
    ports = free_ports()
    publish = [arg for host, inside in zip(ports, CONTAINER_PORTS)
               for arg in ("-p", f"127.0.0.1:{host}:{inside}")]
    subprocess.run([*cmd, "run", "-d", "--name", name, *run_limits(cmd), "--read-only",
                    "--tmpfs", "/tmp", *publish, image],
                   check=True, capture_output=True, text=True, timeout=60)
    return Container(name, ports, key_dir)
