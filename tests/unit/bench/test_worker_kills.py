"""The worker-kill drill's choices without a server: which worker it kills (replicas in turn, only
where another worker is READY) and what it calls a failed drill."""

from __future__ import annotations

import pytest

from scripts.bench.scenarios import worker_kills


class Replica:
    """A replica's management client as far as the drill reads it: its workers' states."""

    def __init__(self, *workers: tuple[int, str]) -> None:
        self.listed = [{"pid": pid, "status": status} for pid, status in workers]

    def workers(self, model: str) -> list[dict]:
        return self.listed


@pytest.fixture
def killed(monkeypatch) -> list[tuple[int, int]]:
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(worker_kills.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    return sent


def test_replicas_are_taken_in_turn(killed):
    replicas = [Replica((11, "READY"), (12, "READY")), Replica((21, "READY"), (22, "READY"))]
    assert worker_kills.kill_a_worker(replicas, 0) == 11
    assert worker_kills.kill_a_worker(replicas, 1) == 21
    assert [pid for pid, _ in killed] == [11, 21]
    assert {sig for _, sig in killed} == {worker_kills.signal.SIGKILL}


def test_only_where_another_worker_is_ready(killed):
    reloading = Replica((11, "READY"), (12, "UNLOADING"))
    # Its turn, but without a spare READY worker: the other replica's worker instead.
    assert worker_kills.kill_a_worker([reloading, Replica((21, "READY"), (22, "READY"))], 0) == 21
    assert worker_kills.kill_a_worker([reloading, Replica((21, "READY"), (22, "STOPPED"))], 0) is None
    assert [pid for pid, _ in killed] == [21]


def figures(**changes) -> dict:
    return {"kills": 4, "vanished": 0, "failed": {}, "edge_retries": 1, "client_resent_lost": 0,
            **changes}


def test_a_drill_passes_only_with_every_kill_every_answer_and_a_batch_met():
    assert worker_kills.problems(figures(), 4) == []
    assert worker_kills.problems(figures(edge_retries=0, client_resent_lost=2), 4) == []
    assert len(worker_kills.problems(figures(kills=3), 4)) == 1
    assert len(worker_kills.problems(figures(vanished=1), 4)) == 1
    assert len(worker_kills.problems(figures(failed={"503 busy": 2}), 4)) == 1
    # 503s resent after Retry-After are no kill's doing: no replay, no 500/507 resent, fails.
    assert len(worker_kills.problems(figures(edge_retries=0), 4)) == 1
