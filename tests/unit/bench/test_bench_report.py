"""The benchmark's table and verdicts (scripts/bench/load/report.py) from a results document
shaped as `make bench` writes it: the per-service medians, the SLO rate taken conservatively
(ours' worst repeat, the others' best), and each target's verdict flipping where it should."""

from __future__ import annotations

import copy

import pytest

from scripts.bench.load import loadtest, report


def window(p50: float, p99: float, p999: float, errors: int = 0, rps: float = 50.0) -> dict:
    return {"latency_ms": {"p50": p50, "p99": p99, "p99.9": p999}, "errors": errors, "achieved_rps": rps}


def rnd(ours_rate: float, triton_rate: float, box_sat: float) -> dict:
    r = {"inproc": {"solo_latency_ms_p50": 16.0, "batch_ips": 110.0}, "load_after": (0.5, 0.5, 0.5)}
    for label, p50, sat in (("ours", 19.0, 100.0), ("container", 19.5, box_sat), ("fastapi", 18.0, 80.0),
                            ("triton", 25.0, 90.0), ("bentoml", 30.0, 70.0), ("floor", 1.3, None)):
        r[f"{label}_10"] = window(p50, p50 * 1.5, p50 * 2, rps=10)
        r[f"{label}_50"] = window(p50 + 2, 40.0, 55.0)
        if sat:
            r[f"{label}_sat"] = {"achieved_rps": sat}
    for label, rate in (("ours", ours_rate), ("fastapi", 40), ("triton", triton_rate), ("bentoml", 50)):
        r[f"{label}_sweep"] = {"max_rps_under_slo": rate}
    return r


def results(rounds: list[dict]) -> dict:
    res = {"slo_ms": 50.0, "rounds": rounds, "load_before": (0.4, 0.4, 0.4), "knobs": {},
           "profile": {"target": 60, "step": 30, "warmup": 5},
           "gflop_per_image": {"efficientnet_lite0": 0.8}, "machine_gflops": {"2 threads": 180.0}}
    res["summary"] = report.summarize(res)
    return res


def verdicts(res: dict) -> dict[str, str]:
    return {name.split(" (")[0]: v for name, _, v in res["summary"]["targets"]}


def test_the_slo_rate_is_ours_worst_repeat_against_the_peers_best():
    res = results([rnd(70, 60, 99), rnd(60, 70, 99)])
    per = res["summary"]["services"]
    assert per["ours"]["max_rps"] == 60 and per["triton"]["max_rps"] == 70
    assert verdicts(res)["ours >= every peer on the highest rate under the SLO"] == "**not met**"


def test_targets_met_and_the_table_names_every_service():
    res = results([rnd(70, 60, 99), rnd(70, 60, 97)])
    v = verdicts(res)
    assert v["ours >= every peer on the highest rate under the SLO"] == "**met**"
    assert v["ours >= 0.95x the best peer saturated"] == "**met**"
    assert v["container >= 0.95x bare at saturation"] == "**met**"
    assert v["p50 at 10 rps <= 1.25x in-process preprocess + forward"] == "**met**"  # 19 / 16
    text = report.table(res)
    for label in ("ours", "container", "fastapi", "triton", "bentoml", "floor"):
        assert report.ROWS[label] in text


@pytest.mark.parametrize("box_sat, expected", [(95.0, "**met**"), (94.0, "**not met**")])
def test_the_container_verdict_is_095x_of_bare(box_sat, expected):
    res = results([rnd(70, 60, box_sat)])
    assert verdicts(res)["container >= 0.95x bare at saturation"] == expected


def test_errors_at_50_rps_fail_the_p99_target():
    r = rnd(70, 60, 99)
    bad = copy.deepcopy(r)
    bad["ours_50"]["errors"] = 3
    assert verdicts(results([bad]))["p99 at 50 rps < 50 ms"] == "**not met**"
    assert verdicts(results([r]))["p99 at 50 rps < 50 ms"] == "**met**"


def at(p99: float, errors: int = 0) -> dict:
    return {"latency_ms": {"p50": p99 / 2, "p99": p99, "p99.9": p99 * 1.2}, "errors": errors,
            "achieved_rps": 50.0}


@pytest.mark.parametrize("p99s, passes, median", [((30, 60, 40), True, 40), ((30, 60, 55), False, 55),
                                                  ((61, 20, 49), True, 49)])
def test_a_rate_passes_on_its_median_window(p99s, passes, median):
    step = loadtest.rate_verdict(50, [at(p) for p in p99s], 50.0)
    assert step["passes_slo"] is passes
    assert step["p99"] == {"min": min(p99s), "median": median, "max": max(p99s)}
    assert step["latency_ms"]["p99"] == median and step["windows"] == 3  # the median window's own


def test_a_window_with_errors_counts_as_a_miss():
    step = loadtest.rate_verdict(50, [at(30, errors=2), at(45), at(40)], 50.0)
    assert step["passes_slo"] is True and step["p99"]["max"] is None and step["errors"] == 2
    step = loadtest.rate_verdict(50, [at(30, errors=2), at(55), at(40)], 50.0)
    assert step["passes_slo"] is False and step["p99"]["median"] == 55


def test_capacity_is_the_rate_below_the_first_miss():
    verdicts_by_rate = ((10, True), (30, True), (40, False), (50, True))
    steps = [{"offered_rps": r, "passes_slo": ok} for r, ok in verdicts_by_rate]
    assert loadtest.capacity(steps) == 30
    assert loadtest.capacity(steps[2:]) is None


def test_the_targets_compare_with_the_better_triton_and_the_table_shows_the_windows():
    r = rnd(70, 60, 99)
    r["triton_repo_10"], r["triton_repo_50"] = r["triton_10"], r["triton_50"]
    r["triton_repo_sat"] = {"achieved_rps": 120.0, "windows": [118.0, 120.0, 125.0]}
    r["triton_repo_sweep"] = {"max_rps_under_slo": 80, "steps": [
        loadtest.rate_verdict(80, [at(30), at(45), at(70)], 50.0)]}
    res = results([r])
    assert res["summary"]["triton_kept"] == "triton_repo"
    v = verdicts(res)
    assert v["ours >= every peer on the highest rate under the SLO"] == "**not met**"  # 70 < 80
    assert v["ours >= 0.95x the best peer saturated"] == "**not met**"  # 100 vs 120
    text = report.table(res)
    assert "| triton_repo | 1 | 80 | 30 / 45 / 70 | 0 | pass |" in text
    assert "120 (118-125, 3 windows)" in text


def test_without_the_repository_row_the_callable_is_triton():
    res = results([rnd(70, 60, 99)])
    assert res["summary"]["triton_kept"] == "triton"
    assert "triton 60" in dict((n, m) for n, m, _ in res["summary"]["targets"])[
        "ours >= every peer on the highest rate under the SLO"]


def test_a_profile_of_fewer_than_three_windows_says_so():
    res = results([rnd(70, 60, 99)])
    assert "one window per rate (the quick profile)" in report.table(res)
    res["profile"]["windows"] = 3
    assert "3 interleaved windows per rate" in report.table(res)


def test_no_rate_met_by_anyone_decides_nothing():
    r = rnd(0, 0, 99)
    for label in ("fastapi", "bentoml"):
        r[f"{label}_sweep"]["max_rps_under_slo"] = None
    assert verdicts(results([r]))["ours >= every peer on the highest rate under the SLO"] == "n/a"
