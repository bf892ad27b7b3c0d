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
  with the server.
- The working directory is private (0700) from creation: it holds the bearer keys.

    python -m scripts.ops.lifecycle idle run     # exit 1 naming any server running under run/
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
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

LOCK_FILE = "serve.lock"
SUPERVISOR_PID = "supervisor.pid"
KEY_RENEWER_PID = "key_renewer.pid"
PID_FILE = "torchserve.pid"
RESTART_PAUSE_MAX_S = 30.0


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


def server_running(workdir: Path) -> bool:
    """The TorchServe that serve.start launched in `workdir` is alive (its pid file and pid)."""
    try:
        os.kill(int((Path(workdir) / PID_FILE).read_text()), 0)
    except (OSError, ValueError):
        return False
    return True


def start_supervisor(workdir: Path, lock_fd: int, renew_keys: bool) -> int:
    """Launch the supervisor, detached, handing it the lock; returns its pid."""
    out = open(Path(workdir) / "supervisor.out", "ab")
    cmd = [sys.executable, "-m", "scripts.ops.lifecycle", "supervise", "--workdir", str(workdir),
           "--lock-fd", str(lock_fd)] + (["--renew-keys"] if renew_keys else [])
    proc = subprocess.Popen(cmd, cwd=repo.ROOT, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True, pass_fds=(lock_fd,))
    out.close()
    write_holder(lock_fd, proc.pid)
    (Path(workdir) / SUPERVISOR_PID).write_text(str(proc.pid))
    return proc.pid


def _start_renewer(workdir: Path) -> subprocess.Popen:
    out = open(workdir / "key_renewer.out", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "scripts.ops.keys", "renew", "--workdir", str(workdir)],
                            cwd=repo.ROOT, stdout=out, stderr=subprocess.STDOUT)
    out.close()
    (workdir / KEY_RENEWER_PID).write_text(str(proc.pid))
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


def stop_supervisor(workdir: Path, timeout: float = 6.0) -> None:
    """End the supervisor and its key renewer (both, in case the supervisor is already gone) and
    wait until they are gone, so the working directory's lock is free when this returns."""
    procs = []
    for name in (SUPERVISOR_PID, KEY_RENEWER_PID):
        pid_file = Path(workdir) / name
        with contextlib.suppress(OSError, ValueError, psutil.Error):
            proc = psutil.Process(int(pid_file.read_text()))
            proc.terminate()
            procs.append(proc)
        pid_file.unlink(missing_ok=True)
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()


def running_under(root: Path) -> list[str]:
    """'WORKDIR (pid N)' for each server running in a working directory at or under `root`."""
    root = Path(root)
    workdirs = {f.parent for name in (LOCK_FILE, PID_FILE) for f in root.rglob(name)} if root.is_dir() else ()
    found = []
    for workdir in sorted(workdirs):
        pid = holder(workdir)
        if pid is None and server_running(workdir):
            pid = (workdir / PID_FILE).read_text().strip()
        if pid:
            found.append(f"{workdir} (pid {pid})")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    idle = sub.add_parser("idle", help="exit 1 if a server runs in a working directory under ROOT")
    idle.add_argument("root", type=Path)
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
    write_holder(args.lock_fd)
    return supervise(args.workdir, args.renew_keys)


if __name__ == "__main__":
    sys.exit(main())
