"""One server per working directory, and a supervised one: the lock, the ports, the key renewer.

- The lock: `serve.start` takes an exclusive lock on WORKDIR/serve.lock before it launches
  anything and hands it to the supervisor, which holds it as long as the server runs. A second
  start on the same working directory fails at once, naming the pid that holds it, instead of
  overwriting the first server's key file and pid file.
- The ports: each address the server will listen on is bound once before TorchServe starts; one
  in use is an error naming the port and its holder, not a server that fails to bind while
  another one answers our readiness polls.
- The supervisor (`python -m scripts.ops.lifecycle supervise`): keeps the key renewer running
  (restarted within a second when it dies, with a growing pause if it keeps dying) and ends
  with the server. The renewer ends with its supervisor (it checks its parent every poll).
- The pid files (torchserve.pid, supervisor.pid, key_renewer.pid) record who each process is:
  its pid, start time and command line (write_pid). A pid is signalled only while the live
  process still has that start time and command line (recorded_process): after a reboot, or
  once the pid is reused, the file is stale and the process it names is left alone.
- The working directory is private (0700) from creation: it holds the bearer keys.

    python -m scripts.ops.lifecycle idle run     # exit 1 naming any server running under run/
    python -m scripts.ops.lifecycle alive run/key_renewer.pid   # exit 0 while that process runs
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import psutil

from scripts import repo
from scripts.ops.server_config import KEY_FILE, write_private

LOCK_FILE = "serve.lock"
SUPERVISOR_PID = "supervisor.pid"
KEY_RENEWER_PID = "key_renewer.pid"
PID_FILE = "torchserve.pid"
PID_FILES = (PID_FILE, SUPERVISOR_PID, KEY_RENEWER_PID)
RESTART_PAUSE_MAX_S = 30.0
# psutil derives a start time from the boot time, which the kernel gives to the second and may
# shift by one between reads; a pid reused by another process differs by more (or in its
# command line).
START_TIME_TOLERANCE_S = 1.0
CMDLINE_WAIT_S = 2.0
KILL_WAIT_S = 2.0


class LifecycleError(RuntimeError):
    """A server cannot start here: the message says why and what to do."""


class AlreadyServing(LifecycleError):
    pass


class PortInUse(LifecycleError):
    pass


def private_dir(path: Path) -> Path:
    """`path` created (with its parents) or narrowed to mode 0700: only its owner reads the keys."""
    path.mkdir(parents=True, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def lock(workdir: Path) -> int:
    """Take WORKDIR/serve.lock (an open file descriptor holding an exclusive flock), or raise
    AlreadyServing naming the holder. The lock lasts as long as some process keeps the fd open."""
    path = Path(workdir) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise AlreadyServing(
            f"{workdir} is in use: a server started there runs (pid {holder} holds {path}). One "
            f"server per working directory: stop it first (make stop, or python -m "
            f"scripts.ops.serve stop --workdir {workdir}), or give this one another --workdir") from None
    write_holder(fd)
    return fd


def write_holder(fd: int, pid: int | None = None) -> None:
    """Record in the lock file which process holds it (read by the error a second start gets)."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(pid or os.getpid()).encode(), 0)


def holder(workdir: Path) -> str | None:
    """The pid recorded by the process holding WORKDIR's lock, or None when nobody holds it."""
    path = Path(workdir) / LOCK_FILE
    if not path.is_file():
        return None
    try:
        os.close(lock(workdir))
    except AlreadyServing:
        return path.read_text().strip() or "?"
    return None


def _listener(port: int) -> str:
    """' by pid N (name)' for the process listening on `port`, where this user may see it."""
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections("tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return f" by pid {conn.pid} ({psutil.Process(conn.pid).name()})"
    return ""


def check_ports(props: dict[str, str], keys: tuple[str, ...]) -> None:
    """Raise PortInUse if any http(s) address of `keys` in `props` cannot be bound now."""
    for key in keys:
        url = urlsplit(props.get(key, ""))
        if url.scheme not in ("http", "https") or url.port is None:
            continue  # unset, or a Unix socket
        with socket.socket() as sock:
            # As the JVM binds: a port whose last connections linger in TIME_WAIT is free.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((url.hostname, url.port))
            except OSError as exc:
                raise PortInUse(f"{key} {url.hostname}:{url.port} cannot be bound: port {url.port} "
                                f"is in use{_listener(url.port)} ({exc.strerror}). Stop that server, "
                                "or start this one on other ports") from None


def write_pid(path: Path, pid: int) -> None:
    """Record who `pid` is in `path` (its pid, start time and command line): the one format of
    every pid file here, read by recorded_process. Written whole (server_config.write_private)."""
    try:
        proc = psutil.Process(pid)
        record = {"pid": pid, "create_time": proc.create_time(), "cmdline": _cmdline(proc)}
    except psutil.Error as exc:
        raise LifecycleError(f"pid {pid} exited before {path.name} could record it ({exc}); see "
                             f"the .out files in {path.parent}") from None
    write_private(path, json.dumps(record))


def _cmdline(proc: psutil.Process) -> list[str]:
    """The command line of a process just started: Popen returns once the child calls exec, a
    moment before the kernel sets its arguments (seen here: an empty command line), so read until
    it is there, for at most CMDLINE_WAIT_S."""
    deadline = time.monotonic() + CMDLINE_WAIT_S
    while not (cmdline := proc.cmdline()) and time.monotonic() < deadline:
        time.sleep(0.01)
    if not cmdline:
        raise psutil.NoSuchProcess(proc.pid, msg="no command line")
    return cmdline


def read_records(workdir: Path) -> dict[str, str | None]:
    """The text of each pid file of `workdir` (None: absent), as read now: stop decides from one
    reading what it signals and which files it may remove afterwards."""
    records = {}
    for name in PID_FILES:
        try:
            records[name] = (Path(workdir) / name).read_text()
        except FileNotFoundError:
            records[name] = None
    return records


def _recorded_pid(record: str | None) -> int | None:
    try:
        return int(json.loads(record)["pid"]) if record else None
    except (ValueError, KeyError, TypeError):
        return None  # an old bare pid, or not ours


def recorded_process(record: str | None) -> psutil.Process | None:
    """The live process a pid file's text (write_pid's) names, only while it is that same process:
    same start time and command line, not a zombie. None for no record, an old or unreadable one,
    or a pid now held by another process: that file is stale, and its pid is never signalled."""
    pid = _recorded_pid(record)
    if pid is None:
        return None
    try:
        expected = json.loads(record)
        proc = psutil.Process(pid)
        same = (abs(proc.create_time() - float(expected["create_time"])) <= START_TIME_TOLERANCE_S
                and proc.cmdline() == expected["cmdline"] and proc.status() != psutil.STATUS_ZOMBIE)
    except (ValueError, KeyError, TypeError, psutil.Error):
        return None
    return proc if same else None


def read_pid(path: Path) -> psutil.Process | None:
    """recorded_process of the pid file at `path` as it reads now."""
    try:
        return recorded_process(Path(path).read_text())
    except FileNotFoundError:
        return None


def server_running(workdir: Path) -> bool:
    """The TorchServe that serve.start launched in `workdir` is alive: the very process its pid
    file recorded."""
    return read_pid(Path(workdir) / PID_FILE) is not None


def server_group(workdir: Path, record: str | None) -> int | None:
    """The process group of the TorchServe `record` (torchserve.pid's text) names, while any of
    it runs; else None. TorchServe leads its own group, so the group's number is its pid. With
    the leader alive, it must be the recorded process. Once the leader is gone, the kernel does
    not give its number to a new process while the group has members, but a group formed after
    ours ended could have it: it is ours only if a member names a path in this working directory
    on its command line (the Java frontend: -f WORKDIR/config.properties; a worker left by a dead
    frontend: --sock-name WORKDIR/tmp/.ts.sock.N)."""
    pid = _recorded_pid(record)
    if pid is None and record and record.strip().isdigit():
        pid = int(record)  # written before pid files held records: only the member check holds
    if pid is None:
        return None
    if recorded_process(record) is not None:
        return pid
    inside = f"{Path(workdir).resolve()}/"
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(proc.pid) == pid and any(inside in arg for arg in proc.info["cmdline"] or ()):
                return pid
    return None


def clear(workdir: Path, records: dict[str, str | None]) -> None:
    """Remove the pid files that still hold what `records` read, and the key file when the
    server's pid file was one of them (or absent): a server started since keeps its files. Call
    it holding the working directory's lock."""
    workdir = Path(workdir)
    current = read_records(workdir)
    for name, text in records.items():
        if text is not None and current.get(name) == text:
            (workdir / name).unlink(missing_ok=True)
    if current[PID_FILE] in (None, records.get(PID_FILE)):
        (workdir / KEY_FILE).unlink(missing_ok=True)


def start_supervisor(workdir: Path, lock_fd: int, renew_keys: bool) -> int:
    """Launch the supervisor, detached, handing it the lock; returns its pid."""
    out = open(Path(workdir) / "supervisor.out", "ab")
    cmd = [sys.executable, "-m", "scripts.ops.lifecycle", "supervise", "--workdir", str(workdir),
           "--lock-fd", str(lock_fd)] + (["--renew-keys"] if renew_keys else [])
    proc = subprocess.Popen(cmd, cwd=repo.ROOT, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True, pass_fds=(lock_fd,))
    out.close()
    write_holder(lock_fd, proc.pid)
    write_pid(Path(workdir) / SUPERVISOR_PID, proc.pid)
    return proc.pid


def _start_renewer(workdir: Path) -> subprocess.Popen:
    out = open(workdir / "key_renewer.out", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "scripts.ops.keys", "renew", "--workdir", str(workdir)],
                            cwd=repo.ROOT, stdout=out, stderr=subprocess.STDOUT)
    out.close()
    write_pid(workdir / KEY_RENEWER_PID, proc.pid)
    return proc


def supervise(workdir: Path, renew_keys: bool, poll: float = 1.0) -> int:
    """While the server runs, keep its key renewer running; end it with the server (or SIGTERM)."""
    workdir = Path(workdir)
    renewer = _start_renewer(workdir) if renew_keys else None
    restarts, restart_at = 0, None

    def end(signum: int, frame) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, end)
    try:
        while server_running(workdir):
            if renewer is not None and renewer.poll() is not None:
                if restart_at is None:
                    pause = min(RESTART_PAUSE_MAX_S, 2.0 ** restarts - 1)
                    print(f"[supervise] key renewer exited (status {renewer.returncode}); restarting "
                          f"in {pause:.0f} s", flush=True)
                    restart_at = time.monotonic() + pause
                elif time.monotonic() >= restart_at:
                    renewer, restarts, restart_at = _start_renewer(workdir), restarts + 1, None
            time.sleep(poll)
    finally:
        if renewer is not None and renewer.poll() is None:
            renewer.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                renewer.wait(5)
        (workdir / KEY_RENEWER_PID).unlink(missing_ok=True)
    return 0


def stop_supervisor(workdir: Path, records: dict[str, str | None] | None = None,
                    timeout: float = 6.0) -> None:
    """End the supervisor and its key renewer (both: a renewer may outlive a killed supervisor by
    up to a poll), each only while it is the process its pid file recorded, and wait until they
    are gone, so the working directory's lock is free when this returns. `records`: the pid
    files as read before (read_records), else as they read now. Their files are clear()'s."""
    records = read_records(workdir) if records is None else records
    procs = [proc for name in (SUPERVISOR_PID, KEY_RENEWER_PID)
             if (proc := recorded_process(records.get(name))) is not None]
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=KILL_WAIT_S)  # the lock is free once the holder is gone


def running_under(root: Path) -> list[str]:
    """'WORKDIR (pid N)' for each server running in a working directory at or under `root`."""
    root = Path(root)
    workdirs = {f.parent for name in (LOCK_FILE, PID_FILE) for f in root.rglob(name)} if root.is_dir() else ()
    found = []
    for workdir in sorted(workdirs):
        pid = holder(workdir)
        server = read_pid(workdir / PID_FILE)
        if pid is None and server is not None:
            pid = str(server.pid)
        if pid:
            found.append(f"{workdir} (pid {pid})")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    idle = sub.add_parser("idle", help="exit 1 if a server runs in a working directory under ROOT")
    idle.add_argument("root", type=Path)
    alive = sub.add_parser("alive", help="exit 0 if the process PID_FILE recorded still runs")
    alive.add_argument("pid_file", type=Path)
    sup = sub.add_parser("supervise", help="what serve.start launches (not for direct use)")
    sup.add_argument("--workdir", type=Path, required=True)
    sup.add_argument("--lock-fd", type=int, required=True)
    sup.add_argument("--renew-keys", action="store_true")
    args = parser.parse_args(argv)
    if args.action == "idle":
        running = running_under(args.root)
        for entry in running:
            print(f"a server is running: {entry}; stop it first (make stop)", file=sys.stderr)
        return 1 if running else 0
    if args.action == "alive":
        return 0 if read_pid(args.pid_file) is not None else 1
    write_holder(args.lock_fd)
    return supervise(args.workdir, args.renew_keys)


if __name__ == "__main__":
    sys.exit(main())
