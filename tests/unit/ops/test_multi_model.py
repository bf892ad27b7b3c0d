"""Several models on one server, what is checked without starting one: the names `serve start
--model a,b` takes and the tools' `--model`.

- Each name becomes its archive NAME.mar. The names are checked before anything starts: an empty
  name, a name given twice, a character TorchServe's model names do not have, a name without
  NAME.mar in the store (the line lists the archives there): one `error:` line, exit 2, nothing
  written.
- The served models are read from the working directory's config.properties (versions of one
  model named once). `manage` and the load generator take the one served model by default; with
  several served and no `--model`, one line listing them, exit 2. With no model served, the
  readiness probe is not ready.
"""

from __future__ import annotations

import pytest

from scripts.bench.load import loadtest
from scripts.ops import healthcheck, manage, serve, server_config
from scripts.ops.torchserve_http import TorchServeClient


def store_with(tmp_path, *names: str):
    store = tmp_path / "store"
    store.mkdir()
    for name in names:
        (store / f"{name}.mar").write_bytes(b"not read: the names are checked first")
    return store


def serve_main(capsys, store, models: str, tmp_path) -> tuple[int, list[str]]:
    code = serve.main(["start", "--model", models, "--model-store", str(store),
                       "--workdir", str(tmp_path / "run")])
    return code, capsys.readouterr().err.strip().splitlines()


def test_model_names_become_one_archive_each(tmp_path):
    store = store_with(tmp_path, "a", "b")
    assert serve.model_names("a,b", store) == ["a", "b"]
    assert serve.model_names(" a , b ", store) == ["a", "b"]
    assert serve.load_models(["a", "b"]) == "a=a.mar,b=b.mar"


@pytest.mark.parametrize(("models", "says"), [
    ("a,,b", "--model 'a,,b': an empty model name"),
    ("", "--model '': an empty model name"),
    ("a,b,a", "--model 'a,b,a': a is named twice"),
    ("a,../b", "--model '../b': not a model name"),
    ("a,zz", "--model zz: no zz.mar in "),
])
def test_bad_model_names_one_line_exit_2(capsys, tmp_path, models, says):
    store = store_with(tmp_path, "a", "b")
    code, lines = serve_main(capsys, store, models, tmp_path)
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith(f"error: {says}"), lines
    assert not (tmp_path / "run").exists()  # refused before anything was started or written


def test_a_missing_archive_names_the_ones_there(capsys, tmp_path):
    store = store_with(tmp_path, "a", "b")
    _, lines = serve_main(capsys, store, "zz", tmp_path)
    assert "(archives there: a, b)" in lines[0], lines


def workdir_serving(tmp_path, load_models: str):
    workdir = tmp_path / "run"
    workdir.mkdir(parents=True)
    (workdir / server_config.CONFIG_FILE).write_text(f"load_models={load_models}\n"
                                       "inference_address=http://127.0.0.1:1\n"
                                       "management_address=http://127.0.0.1:1\n")
    return workdir


def test_served_models_read_from_the_working_directory(tmp_path):
    # As serve writes it (the verified folders), versions of one model named once.
    workdir = workdir_serving(tmp_path, "a=a,b=b,a=a-2.0")
    assert server_config.served_models(workdir) == ["a", "b"]
    assert server_config.chosen_model(workdir, "b") == "b"
    several = r"^this server serves 2 models \(a, b\): name one with --model$"
    with pytest.raises(server_config.ModelChoiceError, match=several):
        server_config.chosen_model(workdir, None)
    assert server_config.chosen_model(workdir_serving(tmp_path / "one", "a=a"), None) == "a"
    for unnamed in ("all", ""):  # what the server lists then, not the file, says what it serves
        with pytest.raises(server_config.ModelChoiceError, match="name the model with --model$"):
            server_config.served_models(workdir_serving(tmp_path / f"x{unnamed}", unnamed))


def test_no_model_is_not_ready():
    assert healthcheck.check_ready(TorchServeClient(), []) == (healthcheck.NOT_READY, "no model is served")


@pytest.mark.parametrize("tool", ["manage", "loadtest"])
def test_tools_ask_which_model_when_several_are_served(capsys, tmp_path, tool):
    workdir = workdir_serving(tmp_path, "a=a,b=b")
    if tool == "manage":
        code = manage.main(["status", "--workdir", str(workdir)])
    else:
        code = loadtest.main(["--workdir", str(workdir), "--duration", "1", "--quiet"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2, lines
    assert lines == ["error: this server serves 2 models (a, b): name one with --model"], lines
