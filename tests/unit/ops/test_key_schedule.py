"""The key renewer schedules by the key file's expiry on the wall clock, which TorchServe expires
keys by: a suspend or a clock step is noticed within a poll, and a restarted renewer renews keys
that are already past half their life. No server: the renewer's loop with its checks counted."""

from __future__ import annotations

import pytest

from scripts.ops import keys
from tests.support.keys import write_key_file

LIFETIME_S = 3600.0


@pytest.mark.parametrize("left_s, due", [(None, False), (3600, False), (1801, False), (1800, True),
                                         (60, True), (-5, True)])
def test_renewal_is_due_at_half_the_lifetime_left(left_s, due):
    assert keys.renewal_due(left_s, LIFETIME_S) is due


def _renewer(tmp_path, monkeypatch, on_check) -> list[int]:
    """Run renew_forever for 10 checks; on_check(n) runs before the n-th; returns the checks at
    which it renewed (each renewal writes a fresh key file, as TorchServe does)."""
    (tmp_path / "config.properties").write_text("token_expiration_min=60\n")
    checks, renewed = [0], []

    def running(workdir) -> bool:
        checks[0] += 1
        on_check(checks[0])
        return checks[0] <= 10

    def rotate(workdir, *args, **kwargs) -> None:
        renewed.append(checks[0])
        write_key_file(tmp_path / "key_file.json", LIFETIME_S)

    monkeypatch.setattr(keys, "server_running", running)
    monkeypatch.setattr(keys, "rotate", rotate)
    keys.renew_forever(tmp_path, poll=0.01)
    return renewed


def test_a_clock_jump_is_noticed_at_the_next_check(tmp_path, monkeypatch):
    write_key_file(tmp_path / "key_file.json", 50 * 60)

    def jump(check: int) -> None:
        if check == 5:  # a suspend, or the wall clock stepped 30 minutes forward
            write_key_file(tmp_path / "key_file.json", 20 * 60)

    assert _renewer(tmp_path, monkeypatch, jump) == [5]


def test_a_restarted_renewer_renews_keys_past_half_their_life_at_once(tmp_path, monkeypatch):
    write_key_file(tmp_path / "key_file.json", 10 * 60)
    assert _renewer(tmp_path, monkeypatch, lambda check: None) == [1]
