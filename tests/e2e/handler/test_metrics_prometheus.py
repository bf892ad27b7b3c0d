"""Handler metrics on TorchServe's Prometheus endpoint, the alert rules, and a real Prometheus
scraping a real TorchServe (Debian's `prometheus` package, installed by `make prometheus`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time

import pytest
import requests
import yaml
from PIL import Image

from tests.support.servers import MODEL, ROOT, free_ports

pytestmark = pytest.mark.e2e

CONFIG = ROOT / "config"
HISTOGRAMS = ("handler_preprocess_seconds", "handler_inference_seconds", "handler_postprocess_seconds",
              "handler_request_seconds", "handler_batch_size", "handler_image_megapixels")
LINE = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> list[tuple[str, dict, float]]:
    """Prometheus text format -> [(name, labels, value)]."""
    out = []
    for line in text.splitlines():
        m = LINE.match(line)
        if m and not line.startswith("#"):
            out.append((m[1], dict(LABEL.findall(m[2] or "")), float(m[3])))
    return out


def total(samples, name: str, **labels: str) -> float:
    return sum(v for n, lab, v in samples if n == name and labels.items() <= lab.items())


@pytest.fixture(scope="module")
def tools() -> dict[str, str]:
    """prometheus and promtool, installed from Debian when missing (CI starts from a fresh machine)."""
    if not (shutil.which("prometheus") and shutil.which("promtool")):
        subprocess.run(["make", "-s", "prometheus"], cwd=ROOT, check=True, timeout=900)
    found = {name: shutil.which(name) for name in ("prometheus", "promtool")}
    assert all(found.values()), f"prometheus not installed: {found}"
    return found


def test_handler_metrics_reach_the_metrics_endpoint(server, photos):
    c = server.client
    before = parse(c.metrics())
    for _ in range(10):  # let metric lines of earlier tests' requests land first
        time.sleep(0.3)
        before, previous = parse(c.metrics()), before
        if total(before, "handler_request_seconds_count") == total(previous, "handler_request_seconds_count"):
            break
    jpgs = sorted(p for name, p in photos.items() if name.endswith(".jpg"))
    megapixels = 0.0
    for path in jpgs:
        with Image.open(path) as img:
            megapixels += img.width * img.height / 1e6
        assert c.predict(MODEL, path.read_bytes()).status_code == 200
    bad = {"UnsupportedMediaType": b"plain text, not an image",
           "CorruptImage": jpgs[0].read_bytes()[:2000]}  # a JPEG cut short
    for error_type, body in bad.items():
        resp = c.predict(MODEL, body)
        assert resp.status_code in (400, 415) and resp.json()["type"] == error_type
    n_ok, n = len(jpgs), len(jpgs) + len(bad)
    deadline = time.monotonic() + 15  # the frontend parses the workers' metric lines asynchronously
    while True:
        text = c.metrics()
        after = parse(text)
        delta = {name: total(after, name) - total(before, name) for name in
                 [f"{h}_{s}" for h in HISTOGRAMS for s in ("count", "sum")]}
        if delta["handler_request_seconds_count"] >= n or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    for name in HISTOGRAMS:
        assert f"# TYPE {name} histogram" in text
    assert "# TYPE handler_input_errors_total counter" in text
    assert "# TYPE handler_server_errors_total counter" in text
    # Every request is one observation of its handler time and belongs to exactly one batch.
    assert delta["handler_request_seconds_count"] == n
    assert delta["handler_batch_size_sum"] == n and 1 <= delta["handler_batch_size_count"] <= n
    assert delta["handler_preprocess_seconds_count"] == n_ok
    assert delta["handler_image_megapixels_count"] == n_ok
    assert delta["handler_image_megapixels_sum"] == pytest.approx(megapixels, abs=1e-4)
    for stage in ("inference", "postprocess"):
        batches = delta[f"handler_{stage}_seconds_count"]
        assert 1 <= batches <= n and 0 < delta[f"handler_{stage}_seconds_sum"] / batches < 5
    assert 0.001 < delta["handler_preprocess_seconds_sum"] / n_ok < 5  # seconds, not ms
    inf = total(after, "handler_request_seconds_bucket", le="+Inf")
    assert inf == total(after, "handler_request_seconds_count")
    for error_type in bad:
        grew = (total(after, "handler_input_errors_total", ErrorType=error_type)
                - total(before, "handler_input_errors_total", ErrorType=error_type))
        assert grew == 1, error_type
    # Bad images are the client's errors: none of them is counted as a server fault.
    assert total(after, "handler_server_errors_total") == total(before, "handler_server_errors_total")
    grew = total(after, "ts_inference_requests_total") - total(before, "ts_inference_requests_total")
    assert grew == n


def test_promtool_accepts_config_and_rules(tools):
    for args in (["check", "config", str(CONFIG / "prometheus.yml")],
                 ["check", "rules", str(CONFIG / "alerts.yml")]):
        done = subprocess.run([tools["promtool"], *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr


def series(name: str, values: str, **labels: str) -> dict:
    labels = {"instance": "ts:8082", "job": "torchserve", **labels}
    return {"series": name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}",
            "values": values}


def healthy_series(p99_bucket: str = "0.025", fivexx: str = "0+0x30") -> list[dict]:
    per_min = "0+600x30"  # 10 requests/s
    return [
        *(series("handler_request_seconds_bucket", per_min if float(le) >= float(p99_bucket)
                 else "0+0x30", ModelName=MODEL, le=le) for le in ("0.01", "0.025", "0.05", "0.1")),
        series("handler_request_seconds_bucket", per_min, ModelName=MODEL, le="+Inf"),
        series("handler_request_seconds_count", per_min, ModelName=MODEL),
        series("ts_inference_requests_total", per_min, model_name=MODEL),
        series("ts_queue_latency_microseconds", "0+3000000x30", model_name=MODEL),  # 5 ms each
        series("Requests2XX", per_min, Level="Host"),
        series("Requests4XX", "0+0x30", Level="Host"),
        series("Requests5XX", fivexx, Level="Host"),
        series("up", "1x30"),
    ]


def test_alert_rules_fire_on_their_conditions_only(tools, tmp_path):
    """promtool evaluates config/alerts.yml over synthetic series; exactly the expected alerts fire."""
    no_handler = [s for s in healthy_series() if not s["series"].startswith("handler_")]
    down = [s if not s["series"].startswith("up{") else {**s, "values": "0x30"} for s in healthy_series()]
    scenarios = {
        (): healthy_series(),
        ("InferenceLatencyP99High",): healthy_series(p99_bucket="0.1"),
        ("ServerErrorRateHigh",): healthy_series(fivexx="0+60x30"),
        ("NoReadyWorkers",): no_handler,
        ("TorchServeDown",): down,
    }
    tests = [{"interval": "1m", "input_series": inputs, "promql_expr_test": [{
        "expr": 'count by (alertname) (ALERTS{alertstate="firing"})', "eval_time": "20m",
        "exp_samples": [{"labels": f'{{alertname="{a}"}}', "value": 1} for a in firing]}]}
        for firing, inputs in scenarios.items()]
    spec = tmp_path / "alerts_test.yml"
    spec.write_text(yaml.safe_dump({"rule_files": [str(CONFIG / "alerts.yml")],
                                    "evaluation_interval": "1m", "tests": tests}))
    done = subprocess.run([tools["promtool"], "test", "rules", str(spec)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def query(base: str, promql: str) -> list[dict]:
    resp = requests.get(f"{base}/api/v1/query", params={"query": promql}, timeout=5)
    resp.raise_for_status()
    return resp.json()["data"]["result"]


def test_real_prometheus_scrapes_torchserve_and_loads_the_rules(tools, server, photos, tmp_path):
    c = server.client
    port = free_ports(1)[0]
    config = yaml.safe_load((CONFIG / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(CONFIG / "alerts.yml")]
    target = c.metrics_url.split("://", 1)[1]
    config["scrape_configs"][0]["static_configs"][0]["targets"] = [target]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen([tools["prometheus"], f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        seen: dict = {}
        image = photos["cat.jpg"].read_bytes()
        while time.monotonic() < deadline and proc.poll() is None:
            assert c.predict(MODEL, image).status_code == 200  # traffic while Prometheus scrapes
            try:
                seen["up"] = query(base, 'up{job="torchserve"}')
                seen["count"] = query(base, 'handler_request_seconds_count{job="torchserve"}')
                seen["p99"] = query(base, "model:handler_request_seconds:p99")
                seen["rules"] = requests.get(f"{base}/api/v1/rules", timeout=5).json()["data"]["groups"]
            except requests.RequestException:
                time.sleep(0.5)
                continue
            health = {r["health"] for g in seen["rules"] for r in g["rules"]}
            if seen["p99"] and seen["p99"][0]["value"][1] != "NaN" and health == {"ok"}:
                break
            time.sleep(0.5)
        assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
        assert [s["value"][1] for s in seen["up"]] == ["1"]
        assert seen["count"] and float(seen["count"][0]["value"][1]) > 0
        assert seen["count"][0]["metric"]["ModelName"] == MODEL
        assert seen["p99"] and 0 < float(seen["p99"][0]["value"][1]) < 10, seen["p99"]
        loaded = {r["name"] for g in seen["rules"] for r in g["rules"] if r["type"] == "alerting"}
        declared = {r["alert"] for g in yaml.safe_load((CONFIG / "alerts.yml").read_text())["groups"]
                    for r in g["rules"] if "alert" in r}
        assert loaded == declared and {"InferenceLatencyP99High", "ServerErrorRateHigh",
                                       "NoReadyWorkers"} <= loaded
        health = [r["health"] for g in seen["rules"] for r in g["rules"]]
        assert set(health) == {"ok"}, json.dumps(seen["rules"])[:2000]
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
