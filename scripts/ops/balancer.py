"""HAProxy in front of TorchServe replicas, with the reference config (config/haproxy.cfg).

    python -m scripts.ops.balancer start --replica run/replica1 --replica run/replica2
                                                 # working directories: the agent watches workers
    python -m scripts.ops.balancer start --replica 127.0.0.1:8180 --replica 127.0.0.1:8280
                                                 # addresses only: /ping alone, no agent
    python -m scripts.ops.balancer status        # each replica's state (UP, DOWN) from HAProxy
    python -m scripts.ops.balancer check --replica ... --replica ...   # haproxy -c on the config

Without Kubernetes, this is what keeps the service answering when one TorchServe dies: HAProxy
checks each replica's liveness (GET /ping, answered by its frontend without queueing) and asks
this module's agent (HAProxy's agent-check) whether the replica has a READY worker (its
management API, over the replica's private Unix socket); a dead or workerless replica is taken
out within about a second, a busy one is not. The requests a dead replica or worker held are
replayed on another replica. The replicas run with token authorization off and their management
API on a Unix socket only their user can reach (start_replica); HAProxy checks the clients'
bearer key (BALANCER_KEY) at the edge. config/haproxy.cfg explains every line.

config/haproxy.cfg reads its settings from environment variables, so it also runs by hand
(`haproxy -db -f config/haproxy.cfg`, see its header); this module sets them, keeps HAProxy's
socket, log and key in one working directory, and renders one `server` line per replica when
there are not exactly two.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import re
import secrets
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import requests

from scripts import repo
from scripts.ops import serve
from scripts.ops.server_config import addresses
from scripts.ops.torchserve_http import TorchServeClient

CONFIG = repo.CONFIG_DIR / "haproxy.cfg"
DEFAULT_PORT = 8090
DEFAULT_WORKDIR = repo.RUN_DIR / "balancer"
KEY_FILE = "balancer_key"
SOCKET_FILE = "haproxy.sock"
LOG_FILE = "haproxy.out"
RENDERED_CONFIG = "haproxy.cfg"
BACKEND = "replicas"
# One `server` line per replica in config/haproxy.cfg:
#   server replicaN "${REPLICA_N}" agent-send "replicaN\n"
SERVER_LINE = re.compile(r'^(\s*)server\s+replica\d+\s+"\$\{REPLICA_\d+\}"'
                         r'(\s+agent-send\s+"replica\d+\\n")?\s*$')
# The replicas' settings behind the balancer: it checks the clients' key, not them.
AUTH_OFF = {"disable_token_authorization": "true"}
# The agent asks a replica's management API this long before calling it busy, not dead.
AGENT_CALL_TIMEOUT_S = 1.0
# Debian installs HAProxy in /usr/sbin, which is not on a non-root user's PATH.
HAPROXY_FALLBACK = Path("/usr/sbin/haproxy")
# A unix socket path longer than this does not fit in sockaddr_un (Linux).
MAX_SOCKET_PATH = 107
# In a replica's working directory: the folder (mode 0700) holding its management socket.
PRIVATE_DIR = "private"
SOCKET_NAME = "management.sock"


def find_haproxy() -> str:
    """The haproxy executable (`make haproxy` installs Debian's package)."""
    found = shutil.which("haproxy") or (str(HAPROXY_FALLBACK) if HAPROXY_FALLBACK.is_file() else None)
    if not found:
        raise FileNotFoundError("haproxy not found: run `make haproxy` (Debian's haproxy package)")
    return found


def render(n_replicas: int, template: Path = CONFIG) -> str:
    """The config with one `server replicaI "${REPLICA_I}" ...` line per replica, in place of the
    template's server lines (everything else, the options of default-server included, as is)."""
    if n_replicas < 1:
        raise ValueError("at least one replica")
    out, done = [], False
    for line in template.read_text().splitlines(keepends=True):
        m = SERVER_LINE.match(line)
        if not m:
            out.append(line)
        elif not done:
            out += [f'{m[1]}server replica{i} "${{REPLICA_{i}}}" agent-send "replica{i}\\n"\n'
                    for i in range(1, n_replicas + 1)]
            done = True
    if not done:
        raise ValueError(f'{template}: no `server replicaN "${{REPLICA_N}}"` line to render')
    return "".join(out)


def server_lines(template: Path = CONFIG) -> int:
    return sum(bool(SERVER_LINE.match(line)) for line in template.read_text().splitlines())


def environment(replicas: Sequence[str], port: int, key: str, model: str,
                stats_socket: Path, agent_port: int | None = None) -> dict[str, str]:
    """The variables config/haproxy.cfg reads, on top of this process's environment."""
    env = {**os.environ, "BALANCER_KEY": key, "BALANCER_PORT": str(port),
           "BALANCER_MODEL": model, "BALANCER_STATS_SOCKET": str(stats_socket)}
    env.pop("BALANCER_AGENT_PORT", None)  # only the agent this module runs
    if agent_port is not None:
        env["BALANCER_AGENT_PORT"] = str(agent_port)
    env.update({f"REPLICA_{i}": address for i, address in enumerate(replicas, 1)})
    return env


def read_stats(stats_socket: Path, timeout: float = 2.0) -> list[dict[str, str]]:
    """HAProxy's `show stat` (one row per frontend, server and backend) from its stats socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(stats_socket))
        sock.sendall(b"show stat\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    text = b"".join(chunks).decode().lstrip("# ")
    return list(csv.DictReader(io.StringIO(text)))


def private_socket(workdir: str | Path) -> Path:
    """The management socket's path in `workdir`/private/, that folder made (or kept) mode 0700
    and a socket left by a previous run removed (TorchServe cannot bind over it). The socket
    TorchServe creates is mode 0755 itself: the folder's 0700 keeps other users out, refused at
    connect() by the kernel."""
    folder = Path(workdir).resolve() / PRIVATE_DIR
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)  # an existing folder keeps its mode otherwise
    path = folder / SOCKET_NAME
    if len(str(path)) > MAX_SOCKET_PATH:
        raise ValueError(f"{path}: too long for a Unix socket; use a shorter working directory")
    path.unlink(missing_ok=True)
    return path


def replica_overrides(workdir: Path, ports: tuple[int, int, int]) -> dict[str, str]:
    """A replica's settings: token authorization off (the edge checks the key) and its management
    API on a Unix socket in a folder of its own user's (private_socket), never on TCP."""
    listen = serve.listen_overrides("127.0.0.1", ports, token_auth=False,
                                    management_socket=private_socket(workdir))
    return {**AUTH_OFF, **(listen or {})}


def start_replica(workdir: Path, ports: tuple[int, int, int],
                  models: str = f"{repo.DEFAULT_MODEL}={repo.DEFAULT_MODEL}.mar",
                  model_store: Path = repo.MODEL_STORE, overrides: dict | None = None) -> serve.Server:
    """serve.start for a replica behind the balancer (replica_overrides); the Server's client
    reaches its management API over the socket. Returns at once (serve.wait_ready)."""
    settings = {**replica_overrides(Path(workdir), ports), **(overrides or {})}
    server = serve.start(workdir, models=models, ports=ports, model_store=model_store,
                         overrides=settings)
    server.client = TorchServeClient.from_workdir(server.workdir)
    return server


def agent_verdict(client: TorchServeClient | None, model: str) -> str:
    """HAProxy agent-check's answer for one replica: "up" while it has a READY worker, else
    "down #why". A management API that does not answer in time is busy, not dead: "up" (the
    /ping check and observe layer4 catch a dead frontend). Unwatched replica: "up"."""
    if client is None:
        return "up"
    try:
        workers = client.workers(model)
    except (TimeoutError, requests.Timeout):
        return "up #management slow"
    except (OSError, ValueError) as exc:
        return f"down #management unreachable: {type(exc).__name__}"
    ready = sum(w.get("status") == "READY" for w in workers)
    return "up" if ready else f"down #0 of {len(workers)} workers READY"


class _AgentHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.settimeout(AGENT_CALL_TIMEOUT_S)
        try:
            name = self.request.recv(64).decode(errors="replace").strip()
        except OSError:
            return
        agent: Agent = self.server.agent  # type: ignore[attr-defined]
        verdict = agent_verdict(agent.replicas.get(name), agent.model)
        agent.last[name] = verdict
        with contextlib.suppress(OSError):
            self.request.sendall(verdict.encode() + b"\n")


@dataclass
class Agent:
    """HAProxy's agent-check server on a loopback port: HAProxy connects, sends the replica's
    name (agent-send), reads one line (agent_verdict). It only says what the workers' states
    are; it holds no secret, and the management socket it reads is its own user's."""

    replicas: dict[str, TorchServeClient | None]
    model: str
    last: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _AgentHandler)
        self.server.daemon_threads = True
        self.server.agent = self  # type: ignore[attr-defined]
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.2,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Balancer:
    """A running HAProxy (its own process group) and what a client needs to use it."""

    process: subprocess.Popen
    workdir: Path
    port: int
    key: str
    config: Path
    stats_socket: Path
    agent: Agent | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def alive(self) -> bool:
        return self.process.poll() is None

    def stats(self) -> list[dict[str, str]]:
        return read_stats(self.stats_socket)

    def servers(self) -> dict[str, dict[str, str]]:
        """replica name -> its stats row (`status`: UP, DOWN, "UP 1/2" while going down, ...;
        `stot`: requests sent to it; `lastchg`: seconds since its last state change)."""
        return {row["svname"]: row for row in self.stats()
                if row["pxname"] == BACKEND and row["svname"] not in ("FRONTEND", "BACKEND")}

    def states(self) -> dict[str, str]:
        return {name: row["status"] for name, row in self.servers().items()}

    def wait_up(self, timeout: float = 60.0) -> float:
        """Wait until every replica is UP (health checks passed); returns seconds waited."""
        t0 = time.monotonic()
        states: dict[str, str] = {}
        while time.monotonic() - t0 < timeout:
            if not self.alive():
                raise RuntimeError(f"haproxy exited; see {self.workdir / LOG_FILE}")
            with contextlib.suppress(OSError):
                states = self.states()
                if states and all(s == "UP" for s in states.values()):
                    return time.monotonic() - t0
            time.sleep(0.2)
        raise TimeoutError(f"replicas not all UP after {timeout:.0f} s: {states}")

    def stop(self, grace: float = 5.0) -> None:
        """Soft stop (SIGUSR1: stop listening, finish the requests in flight), then SIGTERM and
        SIGKILL to the process group after `grace` s."""
        for sig, wait in ((signal.SIGUSR1, grace), (signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
            if self.process.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(wait)
        # After HAProxy: an agent gone while HAProxy runs would leave a "down" it said standing.
        if self.agent is not None:
            self.agent.stop()


def _key(workdir: Path, key: str | None) -> str:
    """The clients' bearer key: given, else $BALANCER_KEY, else a fresh random one; written to
    workdir/balancer_key (mode 600) so that clients can read it, as they read key_file.json."""
    key = key or os.environ.get("BALANCER_KEY") or secrets.token_urlsafe(32)
    path = workdir / KEY_FILE
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


def prepare(replicas: Sequence[str], workdir: Path, config: Path = CONFIG) -> Path:
    """The config to run: the template itself when it has one server line per replica, else a
    copy rendered for len(replicas) in workdir."""
    if server_lines(config) == len(replicas):
        return config
    out = workdir / RENDERED_CONFIG
    out.write_text(render(len(replicas), config))
    return out


def check(replicas: Sequence[str], port: int = DEFAULT_PORT, workdir: Path = DEFAULT_WORKDIR,
          model: str = repo.DEFAULT_MODEL, config: Path = CONFIG) -> subprocess.CompletedProcess:
    """`haproxy -c`: the config as it would run with these replicas (a dummy key)."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    env = environment(replicas, port, "check-only", model, workdir / SOCKET_FILE, agent_port=1)
    return subprocess.run([find_haproxy(), "-c", "-f", str(prepare(replicas, workdir, config))],
                          env=env, cwd=workdir, capture_output=True, text=True, timeout=30)


def start(replicas: Sequence[str], port: int = DEFAULT_PORT, workdir: Path = DEFAULT_WORKDIR,
          key: str | None = None, model: str = repo.DEFAULT_MODEL, config: Path = CONFIG,
          timeout: float = 10.0, watch: Sequence[TorchServeClient | None] | None = None) -> Balancer:
    """Start HAProxy in the foreground (-db) in its own process group, logging to
    workdir/haproxy.out; returns once it answers on its stats socket, which it binds together
    with the frontend's port (the replicas may not be UP yet: Balancer.wait_up). `watch`: per
    replica, the client of its management API, for the agent (None: /ping alone decides)."""
    if not replicas:
        raise ValueError("at least one replica address (host:port)")
    watch = list(watch or [None] * len(replicas))
    if len(watch) != len(replicas):
        raise ValueError("one management client (or None) per replica")
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    stats_socket = workdir / SOCKET_FILE
    if len(str(stats_socket)) > MAX_SOCKET_PATH:
        raise ValueError(f"{stats_socket}: too long for a unix socket; use a shorter workdir")
    stats_socket.unlink(missing_ok=True)
    key = _key(workdir, key)
    cfg = prepare(replicas, workdir, config)
    agent = Agent({f"replica{i}": c for i, c in enumerate(watch, 1)}, model) if any(watch) else None
    env = environment(replicas, port, key, model, stats_socket, agent and agent.port)
    log = open(workdir / LOG_FILE, "ab")
    proc = subprocess.Popen([find_haproxy(), "-db", "-f", str(cfg)], cwd=workdir, env=env,
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    log.close()
    balancer = Balancer(proc, workdir, port, key, cfg, stats_socket, agent)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (workdir / LOG_FILE).read_text(errors="replace")[-2000:]
            raise RuntimeError(f"haproxy exited with {proc.returncode}:\n{tail}")
        # Not a probe of the frontend's port: a connection without a request is logged as an error.
        with contextlib.suppress(OSError):
            balancer.stats()
            return balancer
        time.sleep(0.1)
    balancer.stop(grace=0)
    raise TimeoutError(f"haproxy not answering on {stats_socket} after {timeout:.0f} s; "
                       f"see {workdir / LOG_FILE}")


def resolve_replica(spec: str) -> tuple[str, TorchServeClient | None]:
    """`--replica`: HOST:PORT, or a replica's working directory (its inference address from its
    config.properties, and a client of its management API for the agent)."""
    if Path(spec).is_dir():
        return addresses(spec)[0].removeprefix("http://"), TorchServeClient.from_workdir(spec)
    return spec, None


def print_states(stats_socket: Path) -> int:
    try:
        rows = read_stats(stats_socket)
    except OSError as exc:
        print(f"no balancer at {stats_socket}: {exc}", file=sys.stderr)
        return 2
    for row in rows:
        if row["pxname"] == BACKEND and row["svname"] not in ("FRONTEND", "BACKEND"):
            print(f"{row['svname']}: {row['status']} (for {row['lastchg']} s, "
                  f"{row['stot']} requests, last check: {row['check_status']})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["start", "check", "status"],
                        help="start: run HAProxy until SIGINT/SIGTERM; check: validate the "
                             "config; status: the replicas' state from the stats socket")
    parser.add_argument("--replica", action="append", default=[], metavar="HOST:PORT|DIR",
                        help="a replica's inference address, or its working directory (then the "
                             "agent also watches its workers); repeat for each replica")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="loopback port clients send predictions to")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                        help="holds the key file, the stats socket and HAProxy's log")
    parser.add_argument("--model", default=repo.DEFAULT_MODEL,
                        help="model whose workers the agent watches")
    parser.add_argument("--config", type=Path, default=CONFIG, help="HAProxy config template")
    args = parser.parse_args(argv)
    if args.action == "status":
        return print_states(Path(args.workdir).resolve() / SOCKET_FILE)
    if not args.replica:
        parser.error("give each replica with --replica HOST:PORT")
    replicas, watch = zip(*map(resolve_replica, args.replica))
    if args.action == "check":
        done = check(replicas, args.port, args.workdir, args.model, args.config)
        print(done.stdout + done.stderr, end="")
        return done.returncode
    balancer = start(replicas, args.port, args.workdir, model=args.model, config=args.config,
                     watch=watch)
    # The key itself is never printed (stdout may be a log): read it from the file.
    print(f"HAProxy is balancing {len(args.replica)} replicas at {balancer.url}\n"
          f"  key file: {balancer.workdir / KEY_FILE}\n"
          f"  log:      {balancer.workdir / LOG_FILE}\n"
          f"  replicas: python -m scripts.ops.balancer status --workdir {args.workdir}\n"
          f"Try it:\n"
          f"  KEY=$(cat {balancer.workdir / KEY_FILE})\n"
          f"  curl -H \"Authorization: Bearer $KEY\" -T photos/cat.jpg "
          f"{balancer.url}/predictions/{args.model}", flush=True)

    # SIGTERM or SIGINT stops HAProxy softly (Balancer.stop). The handler only records the
    # signal: stopping from inside it would interrupt a Popen.wait that holds the process.
    stopping: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stopping.append(signum))
    while not stopping and balancer.alive():
        time.sleep(0.2)
    if not stopping:
        print(f"haproxy exited with {balancer.process.returncode}; see {balancer.workdir / LOG_FILE}",
              file=sys.stderr)
        return 1
    balancer.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
