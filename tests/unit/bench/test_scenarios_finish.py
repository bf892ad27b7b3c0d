"""The scenario CLIs' last step (scripts.bench.scenarios.finish): the figures as JSON or as the
scenario's report, one FAIL line per problem, exit status 1 exactly when there is a problem."""

from __future__ import annotations

import json

from scripts.bench.scenarios import finish

FIGURES = {"sent": 40, "vanished": 0}


def report(figures: dict) -> str:
    return f"{figures['sent']} sent, {figures['vanished']} never came back"


def test_no_problem_prints_the_report_and_exits_0(capsys):
    assert finish(FIGURES, [], report, as_json=False) == 0
    assert capsys.readouterr().out.splitlines() == ["40 sent, 0 never came back"]


def test_each_problem_is_a_fail_line_after_the_figures_and_exits_1(capsys):
    problems = ["3 kills of 4", "1 request never came back"]
    assert finish(FIGURES, problems, report, as_json=False) == 1
    assert capsys.readouterr().out.splitlines() == [
        "40 sent, 0 never came back", "FAIL: 3 kills of 4", "FAIL: 1 request never came back"]


def test_json_prints_the_figures_not_the_report(capsys):
    def no_report(figures: dict) -> str:
        raise AssertionError("the report is not asked for with --json")

    assert finish(FIGURES, ["a replica left UP"], no_report, as_json=True) == 1
    out = capsys.readouterr().out
    body, fail = out.rsplit("\n", 2)[0], out.splitlines()[-1]
    assert json.loads(body) == FIGURES
    assert fail == "FAIL: a replica left UP"
