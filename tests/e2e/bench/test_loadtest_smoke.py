"""Smoke runs of scripts.bench.load.loadtest against the shared test server: report shape, no failures.

Latency figures are benchmark material (BENCHMARKS.md), not asserted here: the machine is shared.
"""

import json
import subprocess
import sys

import pytest

from scripts.bench.load.loadtest import parse_rates, summarize
from tests.support.servers import MODEL

pytestmark = pytest.mark.e2e


def run_loadtest(server, tmp_path, *args: str, model: str = MODEL, exit_code: int = 0) -> dict:
    out = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "scripts.bench.load.loadtest", "--workdir", str(server.workdir),
           "--model", model, "--out", str(out), "--quiet", *args]
    proc = subprocess.run(cmd, timeout=120, capture_output=True, text=True)
    assert proc.returncode == exit_code, proc.stdout + proc.stderr  # 1: a missed target gates CI
    report = json.loads(out.read_text())
    assert report["passed"] is (exit_code == 0)
    assert proc.stdout.startswith("PASS" if exit_code == 0 else "FAIL"), proc.stdout
    return report


def test_open_loop_report_shape_and_no_failures(server, tmp_path):
    # A generous SLO: the gate is what is tested here, not this shared machine's latency.
    rep = run_loadtest(server, tmp_path, "--rate", "5", "--duration", "3", "--warmup", "1",
                       "--slo-ms", "5000")
    assert rep["mode"] == "open" and rep["offered_rps"] == 5.0
    assert abs(rep["requests"] - 15) <= 1  # 3 s measured at 5 rps; warm-up excluded
    assert rep["errors"] == 0 and rep["errors_by_status"] == {} and rep["ok"] == rep["requests"]
    assert rep["unfinished"] == 0
    lat = rep["latency_ms"]
    assert set(lat) == {"p50", "p90", "p99", "p99.9", "max", "mean"}
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]
    assert 0 < rep["achieved_rps"] <= 5.5
    assert rep["passes_slo"] is True


def test_errors_are_counted_by_status(server, tmp_path):
    rep = run_loadtest(server, tmp_path, "--rate", "5", "--duration", "1", "--warmup", "0",
                       model="no_such_model", exit_code=1)
    assert rep["ok"] == 0 and rep["errors"] == rep["requests"] >= 4
    assert set(rep["errors_by_status"]) == {"404"}


def test_sweep_finds_rate_and_plots(server, tmp_path):
    png = tmp_path / "sweep.png"
    rep = run_loadtest(server, tmp_path, "--sweep", "2,4", "--duration", "1.5", "--warmup", "0.5",
                       "--slo-ms", "5000", "--plot", str(png))
    assert [s["offered_rps"] for s in rep["steps"]] == [2.0, 4.0]
    assert rep["max_rps_under_slo"] == 4.0 and all(s["errors"] == 0 for s in rep["steps"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_parse_rates_and_window():
    assert parse_rates("10:50:20") == [10.0, 30.0, 50.0]
    assert parse_rates("5,7.5") == [5.0, 7.5]
    assert parse_rates("5,10:30:10") == [5.0, 10.0, 20.0, 30.0]
    # (intended, start, end, status): only intended times inside the window count.
    recs = [(0.5, 0.5, 0.6, "200"), (1.0, 1.0, 1.01, "200"), (1.5, 1.5, 1.53, "503"), (2.5, 2.5, 2.6, "200")]
    rep = summarize(recs, (1.0, 2.0), 2.0)
    assert rep["requests"] == 2 and rep["errors_by_status"] == {"503": 1}
    assert rep["latency_ms"]["max"] == pytest.approx(30.0)
