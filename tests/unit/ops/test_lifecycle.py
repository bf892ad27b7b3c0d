"""A supervised lifecycle, without a server: one server per working directory (a lock naming its
holder), a port in use named with its holder, a private working directory, readiness failing
before the keys run out, `make clean` checking first that no server runs; pid files that identify
their process, so a stale one gets no bystander signalled, and a stop that leaves the files of a
server started meanwhile."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time

import psutil
import pytest

from scripts import repo
from scripts.ops import healthcheck, lifecycle, serve
from tests.support.keys import write_key_file


def test_a_second_lock_on_a_workdir_is_refused_naming_the_holder(tmp_path):
    fd = lifecycle.lock(tmp_path)
    try:
        with pytest.raises(lifecycle.AlreadyServing, match=f"pid {os.getpid()} holds"):
            lifecycle.lock(tmp_path)
        assert lifecycle.holder(tmp_path) == str(os.getpid())
    finally:
        os.close(fd)
    assert lifecycle.holder(tmp_path) is None
    os.close(lifecycle.lock(tmp_path))  # free again once the holder closed it


def test_a_port_in_use_is_named_with_its_holder():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(lifecycle.PortInUse, match=rf"port {port} is in use by pid {os.getpid()}"):
            lifecycle.check_ports({"inference_address": f"http://127.0.0.1:{port}"}, ("inference_address",))
    lifecycle.check_ports({"inference_address": f"http://127.0.0.1:{port}"}, ("inference_address",))


def test_private_dir_narrows_an_existing_folder(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    assert stat.S_IMODE(lifecycle.private_dir(folder).stat().st_mode) == 0o700


@pytest.mark.parametrize("left_s, expiring", [(30, True), (-5, True), (20 * 60, False)])
def test_readiness_fails_when_the_keys_are_about_to_expire(tmp_path, left_s, expiring):
    (tmp_path / "config.properties").write_text("token_expiration_min=60\n")
    write_key_file(tmp_path / "key_file.json", left_s)
    message = healthcheck.keys_expiring(tmp_path, tmp_path / "key_file.json")
    assert bool(message) is expiring
    if expiring:
        assert "not being renewed" in message and "key_renewer.out" in message


def test_make_clean_runs_the_idle_check_first():
    recipe = subprocess.run(["make", "-n", "clean"], cwd=repo.ROOT, capture_output=True, text=True,
                            check=True).stdout.splitlines()
    check = next(i for i, line in enumerate(recipe) if "scripts.ops.lifecycle idle run" in line)
    delete = next(i for i, line in enumerate(recipe) if line.startswith("rm -rf"))
    assert check < delete


@pytest.fixture
def bystander():
    """An unrelated live process leading its own session, as a daemon whose pid a reboot gave
    to a stale pid file would."""
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait(5)


def _other_record(pid: int) -> str:
    """A record of `pid` as another process that once had it (started an hour earlier)."""
    started = psutil.Process(pid).create_time() - 3600
    return json.dumps({"pid": pid, "create_time": started, "cmdline": ["sleep", "300"]})


@pytest.mark.parametrize("record", ["bare pid", "another process"])
def test_a_stale_pid_file_leaves_the_process_it_names_alone(tmp_path, bystander, record):
    (tmp_path / "config.properties").write_text("")
    text = str(bystander.pid) if record == "bare pid" else _other_record(bystander.pid)
    names = (lifecycle.PID_FILE, lifecycle.SUPERVISOR_PID, lifecycle.KEY_RENEWER_PID)
    for name in names:
        (tmp_path / name).write_text(text)
    running = lifecycle.server_running(tmp_path)  # True: serve.start would stop() it
    lifecycle.stop_supervisor(tmp_path)  # what serve.start does before it launches
    assert serve.stop(tmp_path, grace=1, drain_timeout=0)  # make stop
    time.sleep(0.5)
    assert bystander.poll() is None, f"pid {bystander.pid} was signalled ({bystander.returncode})"
    assert not running
    assert not [name for name in names if (tmp_path / name).exists()]  # stale: removed


def test_a_pid_file_identifies_its_process_which_alone_is_signalled(tmp_path, bystander):
    pid_file = tmp_path / lifecycle.SUPERVISOR_PID
    lifecycle.write_pid(pid_file, bystander.pid)
    assert stat.S_IMODE(pid_file.stat().st_mode) == 0o600
    assert lifecycle.read_pid(pid_file).pid == bystander.pid
    assert subprocess.run([sys.executable, "-m", "scripts.ops.lifecycle", "alive", str(pid_file)],
                          cwd=repo.ROOT).returncode == 0
    lifecycle.stop_supervisor(tmp_path)
    bystander.wait(5)  # psutil.wait_procs may have reaped it already
    assert not psutil.pid_exists(bystander.pid)  # the recorded process itself was ended


def test_stop_leaves_the_files_of_a_server_started_meanwhile(tmp_path, monkeypatch, capsys):
    """Once the supervisor is gone the lock is free: a start may take it and write its own pid
    and key files before stop's last step, which must not remove them."""
    (tmp_path / "config.properties").write_text("")
    (tmp_path / lifecycle.PID_FILE).write_text(str(2**31 - 1))  # a server that is gone
    real_stop_supervisor, held = lifecycle.stop_supervisor, []

    def then_a_start(workdir, *args, **kwargs):
        real_stop_supervisor(workdir, *args, **kwargs)
        held.append(lifecycle.lock(workdir))  # the new server's supervisor holds it
        (workdir / lifecycle.PID_FILE).write_text("the new server")
        (workdir / "key_file.json").write_text("the new server's keys")

    monkeypatch.setattr(lifecycle, "stop_supervisor", then_a_start)
    try:
        serve.stop(tmp_path, grace=1, drain_timeout=0)
    finally:
        for fd in held:
            os.close(fd)
    assert (tmp_path / "key_file.json").read_text() == "the new server's keys"
    assert (tmp_path / lifecycle.PID_FILE).read_text() == "the new server"
    assert "a new server started there meanwhile" in capsys.readouterr().out  # it saw the lock
