"""A key file that does not read whole (a full disk truncates TorchServe's rewrite of it) is
never taken for keys: readers keep the last good ones, the renewer still renews with the API key
it read before; the files we write are replaced whole, mode 0600."""

from __future__ import annotations

import os
import stat

import pytest
import requests

from scripts.ops import keys, server_config
from tests.support.keys import write_key_file


def _truncate(path) -> None:
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    os.utime(path, ns=(1, 1))  # a stamp of its own, whatever the clock's resolution


@pytest.mark.parametrize("damage", ["truncated", "empty", "no API key"])
def test_a_key_file_not_whole_keeps_the_last_good_keys(tmp_path, damage):
    path = tmp_path / "key_file.json"
    write_key_file(path, 3600, inference="good")
    key_file = server_config.KeyFile(path)
    assert key_file.key("inference") == "good"
    left = key_file.seconds_left()
    if damage == "truncated":
        _truncate(path)
    else:
        path.write_text("" if damage == "empty" else '{"inference": {"key": "half"}}')
    with pytest.raises(ValueError):
        server_config.read_keys(path)
    assert key_file.key("inference") == "good" and key_file.key("API") == "a"
    assert key_file.seconds_left() == pytest.approx(left, abs=5)
    write_key_file(path, 3600, inference="renewed")
    assert key_file.key("inference") == "renewed"  # read again once it is whole


def test_a_missing_kind_is_named(tmp_path):
    path = tmp_path / "key_file.json"
    path.write_text('{"inference": {"key": "i"}, "management": {"key": "m"}}')
    with pytest.raises(ValueError, match="has no API key: partly written"):
        server_config.read_key_file(path)


def test_the_renewer_renews_with_the_last_good_api_key_when_the_file_is_truncated(tmp_path, monkeypatch):
    (tmp_path / "config.properties").write_text("management_address=http://127.0.0.1:9\n")
    path = tmp_path / "key_file.json"
    write_key_file(path, 60)
    key_file = server_config.KeyFile(path)
    key_file.key("API")
    _truncate(path)
    sent = []

    def get(url, params, headers, timeout) -> requests.Response:
        sent.append((url, params["type"], headers["Authorization"]))
        resp = requests.Response()
        resp.status_code = 200
        return resp

    monkeypatch.setattr(keys.requests, "get", get)
    keys.rotate(tmp_path, keys=key_file)
    assert sent == [("http://127.0.0.1:9/token", kind, "Bearer a") for kind in keys.KINDS]


def test_write_private_replaces_a_file_whole_and_private(tmp_path):
    path = tmp_path / "key_file.json"
    path.write_text("old")
    os.chmod(path, 0o644)
    server_config.write_private(path, "new")
    assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["key_file.json"]  # no temporary file left


def test_write_private_that_fails_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "key_file.json"
    path.write_text("old")

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(server_config.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        server_config.write_private(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["key_file.json"]
