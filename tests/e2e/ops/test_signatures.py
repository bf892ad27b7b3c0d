"""Archive signatures end to end: an archive signed at packaging (`package --sign-key`) loads and
serves with ARCHIVE_VERIFY_KEY set and pins required, its signature alone letting it run."""

from __future__ import annotations

import pytest

from scripts.ops import pins, signature
from scripts.packaging import package
from tests.support.servers import MODEL, serving

VERIFY = signature.VERIFY_KEY_ENV


@pytest.mark.e2e
def test_an_archive_signed_at_packaging_loads_and_serves(tmp_path, signing_keys, photos, monkeypatch):
    store = tmp_path / "store"
    key = str(signing_keys["ours"][0])
    assert package.main(["--arch", MODEL, "--export-path", str(store), "--sign-key", key]) == 0
    assert signature.signature_path(store / f"{MODEL}.mar").is_file()
    monkeypatch.setenv(VERIFY, str(signing_keys["ours"][1]))
    monkeypatch.setenv(pins.REQUIRED_ENV, "1")  # no ARCHIVE_SHA256: the signature alone lets it run
    monkeypatch.delenv(pins.PIN_ENV, raising=False)
    with serving(tmp_path / "run", store) as server:
        resp = server.client.predict(MODEL, photos["cat.jpg"].read_bytes())
        assert resp.status_code == 200, resp.text
        assert resp.json()["predictions"]
