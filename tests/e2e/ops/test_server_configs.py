"""The served frontend runs with the shipped config.properties' vmargs on its java command line."""

from __future__ import annotations

import psutil
import pytest

from scripts.ops import serve
from scripts.ops.server_config import read_properties
from tests.support.servers import ROOT


@pytest.mark.e2e
def test_the_served_jvm_runs_the_shipped_vmargs(server):
    """config.properties' vmargs reach the frontend's java command line (C1 JIT only, see there)."""
    vmargs = read_properties(ROOT / "config.properties")["vmargs"].split()
    (java,) = serve._group(server.pgid, "java")
    cmdline = psutil.Process(java).cmdline()
    assert vmargs and all(arg in cmdline for arg in vmargs), cmdline
