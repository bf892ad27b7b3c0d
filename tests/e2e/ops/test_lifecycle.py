"""A supervised lifecycle against real servers: a private working directory and key file from
creation; a second start on the same working directory or the same ports refused while the first
keeps serving; a killed key renewer restarted; a killed supervisor taking its renewer along, and
a new start recovering; `lifecycle idle` naming a running server; an archive not the pinned one
refused before TorchServe starts; a Ctrl-C during the warm-up leaving no server running."""

from __future__ import annotations

import stat
import subprocess
import sys
import time

import psutil
import pytest

from scripts import repo
from scripts.ops import keys, lifecycle, pins, serve
from scripts.ops.torchserve_http import sample_jpeg
from tests.support.servers import MODEL, serving

RESTART_WAIT_S = 10.0


@pytest.fixture(scope="module")
def srv(server):
    """The session's server (tests/conftest.py): a refused second start leaves it serving, and
    its killed key renewer is restarted by its supervisor."""
    return server


def _predict_ok(server: serve.Server) -> None:
    resp = server.client.predict(MODEL, sample_jpeg())
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
