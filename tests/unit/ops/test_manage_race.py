"""manage.scale resends a scale request TorchServe's frontend answered with its own race (500
ConcurrentModificationException), a bounded number of times, and nothing else; it scales down one
worker per step (fake clients: no server)."""

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


def test_scale_down_goes_one_worker_per_step():
    """TorchServe does not drain a removed worker: manage.scale removes them one at a time."""
    assert manage.down_steps(3, 1, 1) == [(1, 2), (1, 1)]
    assert manage.down_steps(4, 0, 0) == [(0, 3), (0, 2), (0, 1), (0, 0)]
    assert manage.down_steps(1, 3, 3) == [(3, 3)]  # up: one request
    assert manage.down_steps(2, 1, 2) == [(1, 2)]


class ShrinkingClient(FakeClient):
    """Starts with 3 workers; each scale request leaves `max` of them."""

    def __init__(self) -> None:
        super().__init__([answer(200, "{}")] * 5)
        self.n, self.puts = 3, []

    def scale(self, model, min_workers, max_workers, timeout=None) -> requests.Response:
        self.puts.append((min_workers, max_workers))
        self.n = max_workers
        return super().scale(model, min_workers, max_workers, timeout)

    def describe(self, model) -> list[dict]:
        return [{"modelVersion": "1.0", "minWorkers": 1, "maxWorkers": self.n,
                 "workers": [{"id": str(9000 + i), "status": "READY", "pid": i + 1}
                             for i in range(self.n)]}]


def test_scale_3_to_1_sends_each_step_and_settles():
    client = ShrinkingClient()
    assert manage.scale(client, "m", 1, 1)["ready"] == 1
    assert client.puts == [(1, 2), (1, 1)]
