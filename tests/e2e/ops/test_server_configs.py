"""Every config.properties in the repository, and every address the serve CLI derives, keeps
TorchServe's dangerous surfaces closed: the management API (registers models whose handler code
then runs, scales workers to zero) and gRPC on loopback, model and workflow registration unable
to fetch anything remote, handler metrics declared. A new or edited config that opens one of
them fails here."""

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
