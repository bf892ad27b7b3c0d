"""The copy TorchServe loads (scripts/ops/verified_copy.py), checked without a server: an archive
of ours reads as one zip to both kinds of reader; an entry only the local headers hold is found,
and the inspector refuses that archive; names a worker would import before any check are
refused, the archive's own names pass, a link is refused; the copy holds the bytes hashed,
unpacked into a private folder and held to its manifest."""

from __future__ import annotations

import stat

import pytest

from handler import integrity
from scripts.ops import inspect_mar, pins, verified_copy
from tests.support.archives import rebuilt_mar


def test_an_archive_of_ours_is_one_zip_to_both_kinds_of_reader(default_mar):
    with open(default_mar, "rb") as fh:
        assert verified_copy.zip_problems(fh) == []


def test_an_entry_only_the_local_headers_hold_is_found(default_mar, tmp_path):
    crafted = rebuilt_mar(default_mar, tmp_path / "hidden.mar", {}, hidden={"sitecustomize.py": b"x = 1\n"})
    with open(crafted, "rb") as fh:
        problems = verified_copy.zip_problems(fh)
    assert len(problems) == 1 and "belongs to no entry of the directory" in problems[0], problems


def test_the_inspector_refuses_it(default_mar, tmp_path, capsys):
    crafted = rebuilt_mar(default_mar, tmp_path / "hidden.mar", {}, hidden={"extra.py": b"x = 1\n"})
    assert inspect_mar.main([str(crafted)]) == 2
    assert "local headers and central directory disagree" in capsys.readouterr().err


@pytest.mark.parametrize("name, why", [
    ("sitecustomize.py", "runs at start-up"), ("usercustomize.py", "runs at start-up"),
    ("json.py", "standard library"), ("code/net.py", "standard library"),
    ("encodings/x.py", "standard library"),
    ("torch/__init__.py", "installed one"), ("numpy.so", "installed one"), ("ts/service.py", "installed one"),
    ("../x.py", "out of the model folder"), ("/etc/passwd", "out of the model folder"),
    ("a\\b.py", "out of the model folder"),
])
def test_names_a_worker_would_import_before_any_check_are_refused(name, why):
    assert why in (verified_copy.unsafe_name(name) or ""), name


@pytest.mark.parametrize("name", ["handler/classifier.py", "torchserve_entry.py", "model.py", "model.onnx",
                                  "MAR-INF/MANIFEST.json", "preprocess_code.py", "my_blocks/layers.py",
                                  "weights.pth"])
def test_the_archives_own_names_pass(name):
    assert verified_copy.unsafe_name(name) is None


def test_a_link_is_refused():
    assert verified_copy.unsafe_name("labels.json", is_link=True) == "a symbolic link"


def test_the_copy_holds_the_bytes_hashed_and_unpacks_private(default_mar, tmp_path):
    store = tmp_path / "models"
    checked = pins.verified_copies(default_mar.parent, f"m={default_mar.name}", {}, store)
    folder = store / default_mar.stem
    assert checked.model_store == store and checked.models == f"m={default_mar.stem}"
    assert sorted(p.name for p in store.iterdir()) == [default_mar.stem]  # the copy itself removed
    assert stat.S_IMODE(store.stat().st_mode) == stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert integrity.verify(folder, checked.env)["files"]
