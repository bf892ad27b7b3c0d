"""A supervised lifecycle: one server per working directory (a lock naming its holder), ports in
use named before anything starts, the key renewer restarted when it dies, readiness failing
before the keys run out, a private working directory and key file, `make clean` refused while a
server runs."""

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
from scripts.ops import healthcheck, keys, lifecycle, pins, serve
from scripts.ops.torchserve_http import sample_request
from tests.support.keys import write_key_file
from tests.support.servers import MODEL, serving

RESTART_WAIT_S = 10.0


# ---- without a server ----

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


# ---- against a real server ----

@pytest.fixture(scope="module")
def srv(tmp_path_factory, default_mar):
    with serving(tmp_path_factory.mktemp("lifecycle") / "run", default_mar.parent) as server:
        yield server


def _predict_ok(server: serve.Server) -> None:
    body, headers = sample_request()
    resp = server.client.predict(MODEL, body, headers)
    assert resp.status_code == 200, resp.text


@pytest.mark.e2e
def test_the_workdir_and_the_key_file_are_private_from_creation(srv):
    assert stat.S_IMODE(srv.workdir.stat().st_mode) == 0o700
    assert stat.S_IMODE((srv.workdir / "key_file.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((srv.workdir / "logs").stat().st_mode) == 0o700


@pytest.mark.e2e
def test_a_second_start_on_the_same_workdir_is_refused_and_the_first_keeps_serving(srv, capsys):
    key_file_before = (srv.workdir / "key_file.json").read_text()
    supervisor = lifecycle.read_pid(srv.workdir / lifecycle.SUPERVISOR_PID).pid
    with pytest.raises(lifecycle.AlreadyServing, match=f"pid {supervisor} holds"):
        serve.start(srv.workdir, ports=serve.free_ports())
    assert serve.main(["start", "--workdir", str(srv.workdir)]) == 1
    assert "is in use: a server started there runs" in capsys.readouterr().err
    assert (srv.workdir / "key_file.json").read_text() == key_file_before
    _predict_ok(srv)


@pytest.mark.e2e
def test_another_server_on_the_same_ports_is_refused_naming_the_port(srv, tmp_path):
    port = int(srv.properties["inference_address"].rsplit(":", 1)[1])
    ports = tuple(int(srv.properties[k].rsplit(":", 1)[1]) for k in serve.ADDRESS_KEYS)
    with pytest.raises(lifecycle.PortInUse, match=rf"port {port} is in use by pid \d+ \(java\)"):
        serve.start(tmp_path / "other", ports=ports)
    assert not (tmp_path / "other" / lifecycle.PID_FILE).exists()  # nothing was launched
    _predict_ok(srv)


@pytest.mark.e2e
def test_a_killed_key_renewer_is_restarted(srv):
    pid_file = srv.workdir / lifecycle.KEY_RENEWER_PID
    old = lifecycle.read_pid(pid_file).pid
    psutil.Process(old).kill()
    deadline = time.monotonic() + RESTART_WAIT_S
    new = old
    while time.monotonic() < deadline and new == old:
        time.sleep(0.2)
        renewer = lifecycle.read_pid(pid_file)
        new = renewer.pid if renewer else old
    assert new != old, f"no new key renewer {RESTART_WAIT_S} s after the kill"
    assert "scripts.ops.keys" in " ".join(psutil.Process(new).cmdline())
    assert "key renewer exited" in (srv.workdir / "supervisor.out").read_text()
    keys.rotate(srv.workdir)  # the server itself still renews on request
    _predict_ok(srv)


@pytest.mark.e2e
def test_a_killed_supervisor_takes_its_renewer_along_and_start_recovers(tmp_path, default_mar):
    workdir = tmp_path / "run"
    with serving(workdir, default_mar.parent, min_ready=0):
        supervisor = lifecycle.read_pid(workdir / lifecycle.SUPERVISOR_PID)
        renewer = lifecycle.read_pid(workdir / lifecycle.KEY_RENEWER_PID)
        supervisor.kill()
        _, alive = psutil.wait_procs([renewer], timeout=RESTART_WAIT_S)
        assert not alive, f"the key renewer outlived its supervisor by {RESTART_WAIT_S} s"
        assert "is gone: stopping" in (workdir / "key_renewer.out").read_text()
        # make serve again: the server left without its supervisor is replaced by a supervised one.
        serve.start_ready(workdir, f"{MODEL}={default_mar.name}", default_mar.parent, min_ready=0)
        new_supervisor = lifecycle.read_pid(workdir / lifecycle.SUPERVISOR_PID)
        deadline = time.monotonic() + RESTART_WAIT_S
        while (new_renewer := lifecycle.read_pid(workdir / lifecycle.KEY_RENEWER_PID)) is None:
            assert time.monotonic() < deadline, "no key renewer after the new start"
            time.sleep(0.2)
        assert new_supervisor.pid != supervisor.pid and new_renewer.ppid() == new_supervisor.pid
        assert lifecycle.holder(workdir) == str(new_supervisor.pid)


@pytest.mark.e2e
def test_idle_names_the_running_server_then_passes_once_it_stopped(tmp_path, default_mar):
    root = tmp_path / "run"
    with serving(root / "replica1", default_mar.parent, min_ready=0):
        running = subprocess.run([sys.executable, "-m", "scripts.ops.lifecycle", "idle", str(root)],
                                 cwd=repo.ROOT, capture_output=True, text=True)
        assert running.returncode == 1
        assert str(root / "replica1") in running.stderr
    idle = subprocess.run([sys.executable, "-m", "scripts.ops.lifecycle", "idle", str(root)],
                          cwd=repo.ROOT, capture_output=True, text=True)
    assert idle.returncode == 0, idle.stderr


@pytest.mark.e2e
def test_an_archive_not_the_pinned_one_is_refused_before_torchserve_starts(tmp_path, default_mar):
    pin = {"ARCHIVE_SHA256": f"{default_mar.name}={'0' * 64}"}
    with pytest.raises(pins.PinError, match="is not the pinned 0000"):
        serve.start(tmp_path / "run", models=f"{MODEL}={default_mar.name}", ports=serve.free_ports(),
                    model_store=default_mar.parent, env=pin)
    assert not (tmp_path / "run" / lifecycle.PID_FILE).exists()  # nothing was launched
    assert lifecycle.holder(tmp_path / "run") is None


@pytest.mark.e2e
def test_ctrl_c_during_the_warm_up_stops_the_server_it_never_announced(tmp_path, default_mar, monkeypatch):
    """`make serve` interrupted after READY, before the announcement: no server is left running
    and no warm_up.pending is left for the readiness probe to say not-ready about forever."""
    real_start, workdir = serve.start, tmp_path / "run"
    monkeypatch.setattr(serve, "start", lambda *args, **kwargs: real_start(
        *args, **{**kwargs, "ports": serve.free_ports(), "model_store": default_mar.parent}))

    def interrupted(*args, **kwargs) -> int:
        raise KeyboardInterrupt  # what Python raises on the Ctrl-C's SIGINT

    monkeypatch.setattr(serve, "warm_up", interrupted)
    try:
        try:
            code = serve.main(["start", "--workdir", str(workdir)])
        except KeyboardInterrupt:
            code = "KeyboardInterrupt"
        assert not (workdir / serve.WARM_UP_PENDING).exists()
        assert code == 130
        assert not lifecycle.server_running(workdir) and lifecycle.holder(workdir) is None
    finally:
        serve.stop(workdir, grace=5)
