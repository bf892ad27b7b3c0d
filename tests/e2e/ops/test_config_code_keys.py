"""A config.properties key that makes TorchServe run code, read from a file, never runs: a
system_metrics_cmd naming a script is refused when the server starts, and the marker the script
would write never appears."""

from __future__ import annotations

import stat
import sys
import time

import pytest

from handler.settings import ConfigError
from scripts.ops import serve
from tests.support.servers import config_with, free_ports


@pytest.mark.e2e
def test_system_metrics_cmd_from_a_file_never_runs(tmp_path, default_mar):
    """The audit's reproduction: the shipped config plus one line naming a script that writes a
    marker. Before the check the frontend ran it (the marker appeared)."""
    marker, script = tmp_path / "marker", tmp_path / "x.py"
    script.write_text(f"#!{sys.executable}\nimport pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
                      "print('[]')\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    config = config_with(tmp_path, f"system_metrics_cmd={script}\nmetric_time_interval=1")
    refused = ""
    try:
        serve.start(tmp_path / "run", ports=free_ports(), model_store=default_mar.parent, config=config)
    except ConfigError as exc:
        refused = str(exc)
    else:
        try:
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline and not marker.exists():
                time.sleep(0.5)
        finally:
            serve.stop(tmp_path / "run", grace=10)
    assert not marker.exists(), "the frontend ran system_metrics_cmd from the config file"
    assert "system_metrics_cmd" in refused
