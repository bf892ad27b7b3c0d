"""The GPU benchmark's command, dry-run on the CPU with a small model: the same code path it
takes on a GPU (staging, the handler's runner, initialize + handle with a mock context,
preprocessing throughput, the capacity derivation), bounded to a few seconds of timing."""

from __future__ import annotations

import json

from scripts.bench.micro import gpu


def test_capacity_derives_batch_delay_and_workers_from_measured_latency():
    forward = {"float16": {1: {"p99_ms": 4.0}, 8: {"p99_ms": 10.0}, 32: {"p99_ms": 30.0}}}
    cap = gpu.capacity(forward, pre_ms=2.0, cores=16, slo_ms=50.0)["float16"]
    rows = {r["batch"]: r for r in cap["rows"]}
    assert rows[8]["worst_latency_ms"] == 10 + 8 * 2 + 2 * 10  # d = S, own batch's preprocessing, 2 S
    assert rows[8]["max_batch_delay_ms"] == 10 and rows[8]["workers"] == 3  # ceil((16 + 10) / 10)
    assert rows[32]["meets_slo"] is False  # 30 + 64 + 60 ms
    assert cap["best"]["batch"] == 8 and cap["best"]["rps"] == round(gpu.UTILISATION * 800, 1)
    assert gpu.capacity({"x": {1: {"p99_ms": 60.0}}}, 1.0, 1)["x"]["best"] is None


def test_dry_run_on_the_cpu_writes_json_and_markdown(tmp_path):
    out = tmp_path / "bench"
    assert gpu.main(["--arch", "mobilenet_v3_small", "--batches", "1", "2", "--iters", "2",
                     "--device", "cpu", "--preprocess-seconds", "0.5", "--out", str(out)]) == 0
    report = json.loads((out / "gpu_bench.json").read_text())
    assert set(report["forward"]) == {"float32"}  # reduced precisions are measured on a GPU only
    assert set(report["forward"]["float32"]) == {"1", "2"}
    assert report["handler"]["placement"].startswith("cpu (float32)")
    assert report["preprocess_cpu"]["images_per_s"] > 0
    assert set(report["reduced_precision"]["candidates"]) == {"float16", "bfloat16"}
    markdown = (out / "gpu_bench.md").read_text()
    assert "| float32 | 2 |" in markdown and "Capacity of one GPU" in markdown
