"""manage.scale resends a scale request TorchServe's frontend answered with its own race (500
ConcurrentModificationException), a bounded number of times, and nothing else."""

from __future__ import annotations

import pytest
import requests

from scripts.ops import manage


def answer(status: int, text: str) -> requests.Response:
    resp = requests.Response()
    resp.status_code, resp._content = status, text.encode()
    return resp


RACE = answer(500, '{"code": 500, "type": "ConcurrentModificationException"}')


class FakeClient:
    """The management API's scale answers in order; the model settles at once."""

    def __init__(self, answers: list[requests.Response]) -> None:
        self.answers, self.calls = list(answers), 0

    def scale(self, model, min_workers, max_workers, timeout=None) -> requests.Response:
        self.calls += 1
        return self.answers.pop(0)

    def describe(self, model) -> list[dict]:
        return [{"modelVersion": "1.0", "minWorkers": 1, "maxWorkers": 1,
                 "workers": [{"id": "9000", "status": "READY", "pid": 1, "memoryUsage": 2**20}]}]


@pytest.fixture(autouse=True)
def no_wait(monkeypatch):
    monkeypatch.setattr(manage, "RACE_RETRY_WAIT_S", 0)


def test_a_race_answer_is_resent_until_it_succeeds():
    client = FakeClient([RACE, RACE, answer(200, '{"status": "Workers scaled"}')])
    assert manage.scale(client, "m", 1, 1)["ready"] == 1
    assert client.calls == 3


def test_the_race_is_resent_a_bounded_number_of_times():
    client = FakeClient([RACE] * (manage.RACE_RETRIES + 1))
    with pytest.raises(RuntimeError, match="ConcurrentModificationException"):
        manage.scale(client, "m", 1, 1)
    assert client.calls == manage.RACE_RETRIES + 1


def test_other_refusals_are_not_resent():
    client = FakeClient([answer(500, '{"type": "InternalServerException"}')])
    with pytest.raises(RuntimeError, match="scale refused: HTTP 500"):
        manage.scale(client, "m", 1, 1)
    assert client.calls == 1
