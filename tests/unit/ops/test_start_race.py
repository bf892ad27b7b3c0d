"""A server start that cannot lose a race for its ports: a port taken before every launch makes
serve.start_ready give up after its tries, each on fresh ports."""

from __future__ import annotations

import pytest

from scripts.ops import lifecycle, serve
from tests.support.servers import MODEL


def test_a_port_taken_before_every_launch_gives_up_after_the_tries(tmp_path, monkeypatch):
    calls = []

    def taken(*args, **kwargs) -> serve.Server:
        calls.append(kwargs["ports"])
        raise lifecycle.PortInUse("inference_address 127.0.0.1:1 cannot be bound")

    monkeypatch.setattr(serve, "start", taken)
    with pytest.raises(lifecycle.PortInUse):
        serve.start_ready(tmp_path / "run", f"{MODEL}={MODEL}.mar", tmp_path, tries=3)
    assert len(calls) == 3 and len(set(calls)) == 3  # fresh ports each time
