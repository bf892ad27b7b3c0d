"""A server start that cannot lose a race for its ports: a port found free and taken by another
process before TorchServe binds it makes serve.start_ready start again on fresh ports."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import pytest

from scripts.ops import serve
from scripts.ops.torchserve_http import sample_jpeg
from tests.support.servers import MODEL

pytestmark = pytest.mark.e2e


def test_a_port_taken_before_torchserve_binds_it_is_replaced(tmp_path, default_mar, monkeypatch):
    """Another process listens on the inference port after the launch's own check passed and
    before the JVM (seconds to start) binds it: TorchServe fails to bind and exits, and the start
    goes on with fresh ports."""
    real_start, launched, squatters = serve.start, [], []

    def start_then_take_its_port(*args, **kwargs) -> serve.Server:
        server = real_start(*args, **kwargs)
        launched.append(server)
        if len(launched) == 1:
            squatter = socket.socket()
            squatter.bind(("127.0.0.1", urlsplit(server.client.inference_url).port))
            squatter.listen()
            squatters.append(squatter)
        return server

    monkeypatch.setattr(serve, "start", start_then_take_its_port)
    workdir = tmp_path / "run"
    try:
        server = serve.start_ready(workdir, f"{MODEL}={default_mar.name}", default_mar.parent)
        try:
            assert len(launched) == 2
            taken = squatters[0].getsockname()[1]
            assert urlsplit(server.client.inference_url).port != taken
            first_run = (workdir / "torchserve.out").read_bytes()[:server.log_offset].decode(errors="replace")
            assert any(sign in first_run for sign in serve.BIND_FAILED), first_run[-2000:]
            assert server.client.predict(MODEL, sample_jpeg()).status_code == 200
        finally:
            serve.stop(workdir, grace=5)
    finally:
        for squatter in squatters:
            squatter.close()
