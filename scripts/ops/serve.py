"""Start TorchServe with our config, wait until each model's workers are READY, or stop it.

Each server gets its own working directory (key file, logs, pid file, worker sockets, derived
config), and a server on other than the default ports gets free gRPC ports too, so a development
server and test servers can run side by side.

    python -m scripts.ops.serve start        # serve model_store/efficientnet_lite0.mar (make serve)
    python -m scripts.ops.serve start --model a,b   # a.mar and b.mar (make serve MODELS=a,b)
    python -m scripts.ops.serve stop         # (make stop)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests
from prometheus_client.parser import text_string_to_metric_families

from handler.settings import ConfigError, check_keys
from scripts import repo
from scripts.ops import lifecycle, pins
from scripts.ops.server_config import (
    ADDRESS_KEYS,
    CONFIG_FILE,
    DEFAULT_PORTS,
    GRPC_DEFAULT_PORTS,
    GRPC_KEYS,
    KEY_FILE,
    TORCHSERVE_KEYS,
    check_code_keys,
    loopback_url,
    read_properties,
    store_urls,
    write_properties,
)
from scripts.ops.torchserve_http import TorchServeClient, sample_jpeg

PATH_KEYS = ("model_store", "metrics_config", "workflow_store")
STARTUP_LABELS = {"UNLOADING": "LOADING"}
WARM_UP_S = 5.0
WARM_UP_CONCURRENCY = 4
# In the working directory from the start until the warm-up is done (scripts.ops.healthcheck).
WARM_UP_PENDING = "warm_up.pending"
# In the working directory: the archives' verified copies TorchServe loads (pins.verified_copies).
VERIFIED_STORE = "models"
# TorchServe's own rule for a model name; it also keeps a name from leaving the store (../x).
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# What TorchServe's frontend logs when a port it was given is taken (it then exits).
BIND_FAILED = ("Address already in use", "Failed to bind")
START_TRIES = 3
INTERRUPTED = 130  # the shell's status for a command ended by Ctrl-C (128 + SIGINT)
# One line per request in the access log, no per-request chatter elsewhere (see the file).
LOG_CONFIG = repo.CONFIG_DIR / "log4j2.xml"


@dataclass
class Server:
    workdir: Path
    pgid: int
    client: TorchServeClient
    process: subprocess.Popen | None = None
    properties: dict[str, str] = field(default_factory=dict)  # what it runs with, as written
    log_offset: int = 0  # where this start's output begins in torchserve.out (appended to)

    def alive(self) -> bool:
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return False
        return self.process is None or self.process.poll() is None


# Ports handed out below the kernel's ephemeral range: a port found free there could be taken by
# any outgoing connection before TorchServe binds it seconds later (seen: "Failed to bind to address
# /127.0.0.1:45809 ... Address already in use" at a test server's start). Below the range only
# another listener can take it.
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_PORT = 10000
_handed_out: set[int] = set()


def free_ports(n: int = 3) -> tuple[int, ...]:
    """n loopback ports free right now, below the ephemeral range, none handed out before by this
    process (a server that has not bound its ports yet does not show as a listener)."""
    try:
        highest = int(EPHEMERAL_RANGE.read_text().split()[0]) - 1
    except (OSError, ValueError, IndexError):
        highest = 32767
    candidates = list(range(LOWEST_PORT, highest + 1))
    random.shuffle(candidates)
    ports = []
    for port in candidates:
        if port not in _handed_out and _bindable(port):
            ports.append(port)
            _handed_out.add(port)
            if len(ports) == n:
                return tuple(ports)
    raise RuntimeError(f"fewer than {n} free loopback ports between {LOWEST_PORT} and {highest}")


class PortTaken(RuntimeError):
    """TorchServe exited at start because another process bound one of its ports first."""


def start_ready(workdir: Path, models: str, model_store: Path, model: str = repo.DEFAULT_MODEL,
                min_ready: int = 1, timeout: float = 180.0, warm: bool = False,
                tries: int = START_TRIES, **start_kwargs) -> Server:
    """start() on free ports and wait_ready(); stops the server on failure. A port found free
    can still be taken before TorchServe binds it: on PortInUse (taken before the launch) or
    PortTaken (taken before the bind) it starts again on fresh ports, `tries` times in all."""
    if tries < 1:
        raise ValueError(f"tries={tries}: a server is started at least once")
    for attempt in range(1, tries + 1):
        last = attempt == tries
        try:
            server = start(workdir, models=models, ports=free_ports(), model_store=model_store,
                           **start_kwargs)
        except lifecycle.PortInUse:
            if last:
                raise
            continue
        try:
            wait_ready(server, model, min_ready=min_ready, timeout=timeout, progress=False, warm=warm)
        except PortTaken as exc:
            stop(workdir, grace=5)
            if last:
                raise
            print(f"[serve] {exc}: starting again on other ports", flush=True)
            continue
        except BaseException:
            stop(workdir, grace=5)
            raise
        return server


def bind_failure(server: Server) -> str | None:
    """The line of this start's torchserve.out saying a port could not be bound, if any."""
    try:
        with open(server.workdir / "torchserve.out", "rb") as f:
            f.seek(server.log_offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    return next((line.strip() for line in text.splitlines()
                 if any(sign in line for sign in BIND_FAILED)), None)


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the JVM binds
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def derive_config(workdir: Path, ports: tuple[int, int, int], models: str,
                  base: Path = repo.SERVER_CONFIG,
                  model_store: Path = repo.MODEL_STORE, overrides: dict | None = None,
                  base_properties: dict[str, str] | None = None) -> Path:
    """Copy config.properties with absolute paths, our ports and models into workdir; returns
    the file written. `base_properties`: `base` as already read (else it is read here)."""
    props = derived_properties(base, ports, models, model_store, overrides, base_properties)
    return write_properties(workdir / CONFIG_FILE, props)


def derived_properties(base: Path, ports: tuple[int, int, int], models: str, model_store: Path,
                       overrides: dict | None = None,
                       base_properties: dict[str, str] | None = None,
                       allow_code_keys: frozenset[str] = frozenset()) -> dict[str, str]:
    """The settings a server runs with: `base`'s, with absolute paths, our ports and models.
    Overrides are checked like the file: a misspelt one would otherwise be ignored by TorchServe.
    Keys that run code are refused from the file (server_config.CODE_KEYS) unless the operator
    allowed them (`allow_code_keys`); overrides are the calling code's own, not checked so."""
    check_keys(overrides or {}, TORCHSERVE_KEYS, "config.properties overrides")
    props = dict(base_properties if base_properties is not None else read_properties(base))
    check_code_keys(props, str(base), allow_code_keys)
    for key in PATH_KEYS:
        if key in props and not Path(props[key]).is_absolute():
            props[key] = str((base.parent / props[key]).resolve())
    props.update(loading(model_store, models))
    for key, port in zip(ADDRESS_KEYS, ports):
        props[key] = loopback_url(port)
    if tuple(ports) != DEFAULT_PORTS:
        # TorchServe also listens for gRPC (7070/7071 by default): a second server on other HTTP
        # ports would fail to bind those, so it gets free ones too.
        props.update(zip(GRPC_KEYS, map(str, free_ports(2))))
    props.update(overrides or {})
    return props


def loading(model_store: Path, models: str) -> dict[str, str]:
    """The settings that say what TorchServe loads: the store, its models, and as the only URLs
    it may copy an archive from, those directly in that store (not the folder config.properties
    names, the image's, which would admit nothing here)."""
    store = str(Path(model_store).resolve())
    return {"model_store": store, "allowed_urls": store_urls(store), "load_models": models}


def start(workdir: Path = repo.RUN_DIR, models: str = f"{repo.DEFAULT_MODEL}={repo.DEFAULT_MODEL}.mar",
          ports: tuple[int, int, int] = DEFAULT_PORTS, model_store: Path = repo.MODEL_STORE,
          overrides: dict | None = None, env: dict | None = None,
          log_config: Path | None = LOG_CONFIG, config: Path = repo.SERVER_CONFIG,
          config_properties: dict[str, str] | None = None,
          allow_code_keys: frozenset[str] = frozenset()) -> Server:
    """Launch TorchServe in its own process group, and its supervisor (scripts.ops.lifecycle),
    which holds the working directory's lock and keeps the key renewer running; returns at once
    (see wait_ready). `config_properties`: `config` as the caller already read it (else it is
    read here, once). Raises ConfigError (a key that runs code and is not in `allow_code_keys`),
    lifecycle.AlreadyServing, PortInUse or pins.PinError before launching anything."""
    workdir = lifecycle.private_dir(Path(workdir).resolve())
    lock_fd = lifecycle.lock(workdir)
    try:
        left = lifecycle.read_records(workdir)[lifecycle.PID_FILE]
        if lifecycle.server_group(workdir, left) is not None:
            print(f"[serve] stopping the server left in {workdir} without its supervisor", flush=True)
            _halt(workdir, left, grace=10)
        # The configuration first (no file may carry a key that runs code); then the operator's
        # pins (ARCHIVE_SHA256) and signature key (ARCHIVE_VERIFY_KEY), before any archive code
        # can run and before the ports: a refused archive is refused whatever else is wrong.
        # What the workers need to hold their extracted archive to the same bytes comes back.
        props = derived_properties(Path(config), ports, models, model_store, overrides, config_properties,
                                   allow_code_keys)
        # TorchServe loads the verified copies unpacked in the working directory, never the store's
        # archives (scripts/ops/verified_copy.py).
        env = {**(env or {})}
        checked = pins.verified_copies(Path(model_store).resolve(), models, {**os.environ, **env},
                                       workdir / VERIFIED_STORE)
        env.update(checked.env)
        props.update(loading(checked.model_store, checked.models))
        lifecycle.check_ports({**props, **grpc_addresses(props)}, ADDRESS_KEYS + GRPC_KEYS)
        return _launch(workdir, props, ports, checked.model_store, env, log_config, lock_fd)
    finally:
        os.close(lock_fd)  # the supervisor holds its own copy from here on


def grpc_addresses(props: dict[str, str]) -> dict[str, str]:
    """The gRPC ports TorchServe binds (on by default), as addresses lifecycle.check_ports reads."""
    return {key: loopback_url(props.get(key, default))
            for key, default in zip(GRPC_KEYS, GRPC_DEFAULT_PORTS)}


def _launch(workdir: Path, props: dict[str, str], ports: tuple[int, int, int], model_store: Path,
            env: dict | None, log_config: Path | None, lock_fd: int) -> Server:
    (workdir / "tmp").mkdir(exist_ok=True)
    # What a server that died without stop() left: a renewer that outlived its supervisor is
    # stopped (by identity), every pid file and the key file removed (TorchServe writes a new one).
    records = lifecycle.read_records(workdir)
    lifecycle.stop_supervisor(workdir, records)
    lifecycle.clear(workdir, records)
    config = write_properties(workdir / CONFIG_FILE, props)
    run_env = {**os.environ, **(env or {}),
               # TorchServe keeps one global pid file in the temp dir (TMPDIR) and its worker sockets
               # in TEMP (/tmp/.ts.sock.9000, ...): give each server its own of both.
               "TMPDIR": str(workdir / "tmp"), "TEMP": str(workdir / "tmp"),
               "LOG_LOCATION": str(workdir / "logs"), "METRICS_LOCATION": str(workdir / "logs")}
    bin_dir = Path(sys.executable).parent
    run_env["PATH"] = f"{bin_dir}{os.pathsep}{run_env.get('PATH', '')}"
    cmd = [str(bin_dir / "torchserve"), "--start", "--foreground", "--ncs",
           "--ts-config", str(config), "--model-store", str(Path(model_store).resolve())]
    if log_config:  # None: TorchServe's built-in logging
        cmd += ["--log-config", str(log_config)]
    log = open(workdir / "torchserve.out", "ab")
    log_offset = log.tell()
    # umask 077: what TorchServe writes (key_file.json above all, logs) is its owner's alone.
    proc = subprocess.Popen(cmd, cwd=workdir, env=run_env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, umask=0o077)
    log.close()
    lifecycle.write_pid(workdir / lifecycle.PID_FILE, proc.pid)
    lifecycle.start_supervisor(workdir, lock_fd, renew_keys=token_auth_on(props))
    client = TorchServeClient(*map(loopback_url, ports),
                              key_file=workdir / KEY_FILE)
    return Server(workdir, proc.pid, client, proc, props, log_offset)


def token_auth_on(props: dict[str, str]) -> bool:
    return props.get("disable_token_authorization", "false") != "true"


def model_names(text: str, model_store: Path) -> list[str]:
    """The models `--model` names ("a,b"), each a model name with NAME.mar in `model_store`, none
    twice; ValueError with the one line that says what is wrong, before anything starts."""
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise ValueError(f"--model {text!r}: an empty model name; give NAME[,NAME...], each with "
                         f"NAME.mar in {model_store}")
    for name in names:
        if not MODEL_NAME.fullmatch(name):
            raise ValueError(f"--model {name!r}: not a model name (letters, digits, '_', '-', '.'; "
                             "a letter or digit first)")
        if names.count(name) > 1:
            raise ValueError(f"--model {text!r}: {name} is named twice; name each model once")
    for name in names:
        if not (Path(model_store) / f"{name}.mar").is_file():
            there = sorted(p.stem for p in Path(model_store).glob("*.mar"))
            raise ValueError(f"--model {name}: no {name}.mar in {model_store} (archives there: "
                             f"{', '.join(there) or 'none'}); package it there or name one of those")
    return names


def load_models(names: list[str]) -> str:
    """TorchServe's load_models for `names`: each model from its own archive, NAME=NAME.mar."""
    return ",".join(f"{name}={name}.mar" for name in names)


def wait_all_ready(server: Server, models: list[str], timeout: float, warm: bool = True) -> float:
    """wait_ready for each model in turn, all within `timeout` s; returns seconds waited. The
    server is ready only when every model it serves is READY (and warmed)."""
    t0 = time.monotonic()
    for model in models:
        wait_ready(server, model, timeout=max(1.0, timeout - (time.monotonic() - t0)), warm=warm)
    return time.monotonic() - t0


def wait_ready(server: Server, model: str, min_ready: int = 1, timeout: float = 180.0,
               progress: bool = True, warm: bool = False) -> float:
    """Poll the management API until `min_ready` workers are READY, then (warm) send warm-up
    predictions through the frontend; returns seconds waited. `serve start` warms up (the first
    seconds of a fresh frontend were the slowest, RELIABILITY.md "READY means ready"); tests
    that start many servers do not need to."""
    t0 = time.monotonic()
    last = ""
    while time.monotonic() - t0 < timeout:
        if not server.alive():
            taken = bind_failure(server)
            raise (PortTaken if taken else RuntimeError)(
                f"TorchServe exited{f' ({taken})' if taken else ''}; see {server.workdir / 'torchserve.out'}")
        try:
            workers = server.client.workers(model)
            # TorchServe reports a worker whose model is still loading as UNLOADING.
            states = [w.get("status", "?") for w in workers]
            states = [STARTUP_LABELS.get(state, state) for state in states]
            status = f"{model} workers: {', '.join(states) or 'none yet'}"
            if states.count("READY") >= min_ready:
                if progress:
                    print(f"\r[serve] {status} after {time.monotonic() - t0:.1f} s   ", flush=True)
                if warm:
                    warm_up(server, model, progress=progress)
                return time.monotonic() - t0
        except Exception as exc:  # frontend not listening yet, key file not written yet
            status = f"waiting for the frontend ({type(exc).__name__})"
        if progress and status != last:
            print(f"\r[serve] {status} ({time.monotonic() - t0:.0f} s)      ", end="", flush=True)
            last = status
        time.sleep(0.5)
    raise TimeoutError(f"{model}: fewer than {min_ready} READY workers after {timeout:.0f} s; "
                       f"see {server.workdir / 'logs' / 'model_log.log'}")


def warm_up(server: Server, model: str, seconds: float = WARM_UP_S, progress: bool = True) -> int:
    """Real predictions through the frontend, a few at a time, for `seconds` before the server is
    announced. The workers warm their own path in initialize; this warms the rest (the Java
    frontend's code is interpreted until its JIT compiles it under traffic): at 50 rps the first
    4 s after READY had p99 122-132 ms without it, 45-47 ms with it (RELIABILITY.md)."""
    body = sample_jpeg(256)
    deadline = time.monotonic() + seconds
    sent = 0
    with ThreadPoolExecutor(WARM_UP_CONCURRENCY) as pool:
        while time.monotonic() < deadline:
            list(pool.map(lambda _: server.client.predict(model, body), range(WARM_UP_CONCURRENCY)))
            sent += WARM_UP_CONCURRENCY
    if progress:
        print(f"[serve] {model} warmed up with {sent} requests in {seconds:g} s", flush=True)
    return sent


def in_flight(metrics_text: str) -> tuple[float, float]:
    """(requests received by the frontend, requests our handler has answered) from /metrics,
    each summed over its labels (workers, models); ValueError for text that is not Prometheus's."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals.get("ts_inference_requests_total", 0.0), totals.get("handler_request_seconds_count", 0.0)


def drain(workdir: Path, timeout: float, stall: float = 3.0, settle: float = 0.5) -> None:
    """Wait until every request TorchServe has received is answered (or `timeout` s pass).

    TorchServe's own SIGTERM closes every open connection at once, failing queued and running
    requests; so we wait first. Done when received == answered has held for `settle` s (a
    request whose body the frontend is still reading is not counted yet: a balance seen once,
    right after a burst was written, let SIGTERM reset 16 requests), or when neither count moved
    for `stall` s (a request refused before the handler, or lost with a crashed worker, never
    balances the counts).
    """
    # `make stop` runs in another process than `serve start`: the working directory's file is
    # the record of the addresses the server listens on.
    url = read_properties(Path(workdir) / CONFIG_FILE).get("metrics_address")
    deadline, last, since = time.monotonic() + timeout, None, time.monotonic()
    while url and time.monotonic() < deadline:
        try:
            received, answered = in_flight(requests.get(f"{url}/metrics", timeout=2).text)
        except (requests.RequestException, ValueError):
            return
        if (received, answered) != last:
            last, since = (received, answered), time.monotonic()
        elif time.monotonic() - since > (settle if received <= answered else stall):
            return
        time.sleep(0.1)


def _group(pgid: int, name: str | None = None) -> list[int]:
    """Live (non-zombie) processes of a process group, optionally only those called `name`."""
    pids = []
    for p in psutil.process_iter(["name", "status"]):
        try:
            if (os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE
                    and name in (None, p.info["name"])):
                pids.append(p.pid)
        except (ProcessLookupError, PermissionError):
            continue
    return pids


def stop(workdir: Path = repo.RUN_DIR, grace: float = 30.0, drain_timeout: float = 20.0) -> bool:
    """Stop the server of `workdir` gracefully (_halt), then its supervisor and key renewer, then,
    holding the working directory's lock, remove the files they leave; returns whether a
    server's pid file was there. Only processes their pid files still identify are signalled
    (lifecycle.recorded_process), and only files that still hold what this stop read first are
    removed: a server started meanwhile keeps its own."""
    workdir = Path(workdir).resolve()
    records = lifecycle.read_records(workdir)
    if not any(records.values()):
        return False
    _halt(workdir, records[lifecycle.PID_FILE], grace, drain_timeout)
    lifecycle.stop_supervisor(workdir, records)
    # The supervisor held the lock while the server ran; now that it is gone a start may take
    # the lock and write its own files at any moment: remove ours only while holding it.
    try:
        lock_fd = lifecycle.lock(workdir)
    except lifecycle.AlreadyServing:
        print(f"[serve] a new server started there meanwhile ({workdir}): its files are left as "
              "they are", flush=True)
    else:
        try:
            lifecycle.clear(workdir, records)
        finally:
            os.close(lock_fd)
    return records[lifecycle.PID_FILE] is not None


def _halt(workdir: Path, record: str | None, grace: float, drain_timeout: float = 20.0) -> None:
    """Drain in-flight requests, SIGTERM the Java frontend (it stops listening and unloads the
    workers), wait up to `grace` s for the process group, then SIGKILL what is left; only when
    `record` (torchserve.pid's text) names a group of this server (lifecycle.server_group).

    Signalling the whole group at once would kill the Python workers mid-request.
    """
    pgid = lifecycle.server_group(workdir, record)
    if pgid is None or not _group(pgid):
        return
    drain(workdir, drain_timeout)
    # The Java frontend first: it stops listening, then unloads its workers.
    for pid in _group(pgid, "java") or [pgid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _group(pgid, "java"):
        time.sleep(0.2)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        while time.monotonic() < deadline and _group(pgid):
            time.sleep(0.2)
        deadline = time.monotonic() + 5


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--model", default=repo.DEFAULT_MODEL,
                        help="model name, or names comma-separated (a,b): each NAME.mar in the "
                             "model store, served with its own workers and settings")
    parser.add_argument("--workdir", type=Path, default=repo.RUN_DIR,
                        help="holds key_file.json, logs/ and the pid file")
    parser.add_argument("--timeout", type=float, default=180, help="seconds to wait for READY")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address the APIs listen on (0.0.0.0 inside a container); the "
                             "management API stays on loopback where token authorization is off")
    parser.add_argument("--config", type=Path, default=repo.SERVER_CONFIG,
                        help="TorchServe settings to start from (default: config.properties; "
                             "KServe: the mounted storage's config/config.properties)")
    parser.add_argument("--model-store", type=Path,
                        help="folder holding NAME.mar (default: the config's model_store)")
    parser.add_argument("--allow-code-key", action="append", default=[], metavar="KEY",
                        help="admit this config key although it makes TorchServe run code "
                             "(system_metrics_cmd, plugins_path, vmargs beyond memory and "
                             "compiler flags, ...: SECURITY.md); only for a config you wrote")
    parser.add_argument("--foreground", action="store_true",
                        help="stay attached until TorchServe exits; SIGTERM stops it gracefully "
                             "(the container entrypoint)")
    args = parser.parse_args(argv)
    if args.action == "stop":
        print("TorchServe stopped." if stop(args.workdir) else "TorchServe was not running.")
        return 0
    ports = DEFAULT_PORTS
    try:
        base = read_properties(args.config)  # the one read of it: start() derives from this dict
        # The file's keys first, whatever the archives: a key that runs code is named at once.
        check_code_keys(base, str(args.config), frozenset(args.allow_code_key))
    except ConfigError as exc:
        return config_error(exc)
    store = args.model_store or Path(base.get("model_store", repo.MODEL_STORE))
    if not store.is_absolute():
        store = args.config.resolve().parent / store
    try:
        names = model_names(args.model, store)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        server = start(args.workdir, models=load_models(names), ports=ports, model_store=store,
                       overrides=listen_overrides(args.host, ports, token_auth_on(base)), config=args.config,
                       config_properties=base, allow_code_keys=frozenset(args.allow_code_key))
    except ConfigError as exc:
        return config_error(exc)
    except pins.PinError as exc:  # the archive is refused: the operator's to fix, not a restart's
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except lifecycle.LifecycleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    pending = args.workdir / WARM_UP_PENDING  # the readiness probe says no until it is gone
    pending.touch()
    # SIGTERM (docker stop) before the announcement is handled as Ctrl-C is.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        took = wait_all_ready(server, names, timeout=args.timeout, warm=True)
    except (RuntimeError, TimeoutError) as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        stop(args.workdir)
        return 1
    except KeyboardInterrupt:
        # Nobody was told the server is there: an interrupted start means "do not start".
        print("\ninterrupted before TorchServe was announced: stopping it", file=sys.stderr, flush=True)
        stop(args.workdir, grace=10)
        return INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
        pending.unlink(missing_ok=True)
    print(announcement(server, names, took, args.workdir / KEY_FILE), flush=True)
    return run_foreground(server) if args.foreground else 0


def announcement(server: Server, models: list[str], took: float, key_file: Path) -> str:
    """What `serve start` prints once every model is READY and warmed: each model's URLs."""
    c = server.client
    urls = [f"  {model}:\n"
            f"    inference:  {c.inference_url}/predictions/{model}\n"
            f"    management: {c.management_url}/models/{model}\n" for model in models]
    # The key itself is never printed (a container's stdout is its log): read it from the file,
    # which the key renewer keeps current.
    return (f"TorchServe is serving {', '.join(models)} ({took:.1f} s to READY)\n"
            + "".join(urls)
            + f"  metrics:    {c.metrics_url}/metrics\n"
            f"  key file:   {key_file} (renewed before it expires; re-read it)\n"
            f"Try it (make photos writes photos/cat.jpg):\n"
            f"  AUTH=$(python3 -c \"import json;print('Authorization: Bearer',"
            f"json.load(open('{key_file}'))['inference']['key'])\")\n"
            f"  curl -H @<(echo \"$AUTH\") -T photos/cat.jpg "
            f"{c.inference_url}/predictions/{models[0]}\n"
            f"Stop it: make stop")


def config_error(exc: ConfigError) -> int:
    """An operator's config mistake: one `error:` line per problem, exit status 2."""
    for line in str(exc).splitlines():
        print(f"error: {line}", file=sys.stderr)
    return 2


def _interrupt(signum: int, frame) -> None:
    raise KeyboardInterrupt


def listen_overrides(host: str, ports: tuple[int, int, int], token_auth: bool = True,
                     management_socket: Path | None = None) -> dict | None:
    """Addresses for `--host`: inference and metrics on it; the management API too only while
    token authorization guards it (a container, published on the host's loopback). With token
    authorization off (the cluster configs), management stays on 127.0.0.1 whatever `--host`
    says: an unauthenticated management API registers models and scales workers to zero
    (SECURITY.md). Operators then scale from inside the pod (`python -m scripts.ops.manage`).
    `management_socket` (token authorization off: the replicas behind the balancer): the
    management API on that Unix socket instead, whose folder only the server's user may enter
    (scripts.ops.balancer.private_socket); on loopback TCP it would answer every local user."""
    if host == "127.0.0.1" and not (management_socket and not token_auth):
        return None
    inference, management, metrics = ports
    management_address = f"http://{host if token_auth else '127.0.0.1'}:{management}"
    if management_socket and not token_auth:
        management_address = f"unix:{management_socket}"
    return {"inference_address": f"http://{host}:{inference}",
            "management_address": management_address,
            "metrics_address": f"http://{host}:{metrics}"}


def run_foreground(server: Server) -> int:
    """Wait for TorchServe; SIGTERM or SIGINT (docker stop, Kubernetes) stops it gracefully and
    returns 0. TorchServe ending on its own (its Java frontend died: `torchserve --foreground`
    then exits 0) is a failure: exit 1, so a restart policy of on-failure restarts it."""
    def graceful(signum: int, frame) -> None:
        stop(server.workdir)
        sys.exit(0)

    signal.signal(signal.SIGTERM, graceful)
    signal.signal(signal.SIGINT, graceful)
    status = server.process.wait() if server.process else 0
    print(f"error: TorchServe exited on its own (status {status}): its frontend is gone",
          file=sys.stderr, flush=True)
    lifecycle.stop_supervisor(server.workdir)
    stop(server.workdir, grace=5)  # workers the frontend left behind
    return 1


if __name__ == "__main__":
    sys.exit(main())
