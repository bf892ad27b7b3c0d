"""The handler in-process, as TorchServe's own handler unit tests run theirs: the real
`initialize` on an unpacked archive with a TorchServe Context, then `handle` on batches.

One request's failure stays that request's: its own status and JSON error, neighbours answered.
"""

from __future__ import annotations

import shutil

import pytest
import yaml
from ts.utils.util import list_classes_from_module

from handler import classifier, observability, torchserve_entry
from handler.errors import BadInput, ServerFault
from handler.settings import ConfigError
from scripts import repo
from scripts.packaging.sample_photos import EXPECTED_TOP1
from tests.support.context import make_context, new_batch, statuses
from tests.support.images import encode, gradient


@pytest.fixture(scope="module")
def handler(default_model_dir):
    h = torchserve_entry.ImageClassifierHandler()
    h.initialize(make_context(default_model_dir))
    return h


def handle(h, rows: list[dict]) -> list:
    new_batch(h.context, len(rows))
    return h.handle(rows, h.context)


def test_entry_module_defines_the_one_class_torchserve_looks_for():
    # TorchServe's loader instantiates the single class defined in the --handler module.
    (cls,) = list_classes_from_module(torchserve_entry)
    assert issubclass(cls, classifier.ImageClassifierHandler)


def test_initialize_loads_the_archive(handler, default_model_dir):
    assert handler.initialized and handler.runner.backend == "onnx"
    assert handler.model_name == "efficientnet_lite0" and len(handler.labels) == 1000
    assert handler.preprocess_config.input_size == 224


def test_initialize_freezes_the_start_up_objects_out_of_the_gc(handler):
    """A full collection over torch's and onnxruntime's objects stalls every queued request
    (212 ms measured); frozen after initialize, no collection scans them again."""
    import gc

    assert gc.get_freeze_count() > 100_000
    gc.collect()
    assert len(gc.get_objects()) < gc.get_freeze_count() / 10, "most objects stay frozen"


def test_handle_classifies_real_photos(handler, photos):
    rows = [{"body": photos["cat.jpg"].read_bytes()}, {"data": photos["coffee.png"].read_bytes()}]
    out = handle(handler, rows)
    assert out[0]["predictions"][0]["index"] in EXPECTED_TOP1["cat"]
    assert out[1]["predictions"][0]["index"] in EXPECTED_TOP1["coffee"]
    assert len(out[0]["predictions"]) == handler.top_k and statuses(handler.context) == {}
    names = handler.context.metrics.names()
    assert {"handler_preprocess_seconds", "handler_image_megapixels", "handler_request_seconds"} <= names


def test_batch_errors_are_per_request(handler, monkeypatch):
    real = classifier.preprocess_image

    def with_a_bug(data: bytes, cfg):
        if data == b"trigger a bug!":
            raise RuntimeError("an unexpected failure, not the client's fault")
        return real(data, cfg)

    monkeypatch.setattr(classifier, "preprocess_image", with_a_bug)
    good = encode(gradient(), "PNG")
    seen = len(handler.context.metrics.calls)
    out = handle(handler, [{"body": good}, {"body": b"trigger a bug!"}, {"body": b"garbage"},
                           {"data": good}, {}])
    counted = [name for name, _ in handler.context.metrics.calls[seen:] if name.endswith("_errors_total")]
    # The bug is a server fault, counted apart from the two client errors.
    assert sorted(counted) == ["handler_input_errors_total"] * 2 + ["handler_server_errors_total"]
    assert len(out) == 5
    assert out[0]["predictions"] and out[0]["predictions"] == out[3]["predictions"]
    assert statuses(handler.context) == {1: (500, "Internal Server Error"),
                                         2: (415, "Unsupported Media Type"), 4: (400, "Bad Request")}
    assert out[1]["type"] == "InternalServerError" and "logged" in out[1]["message"]
    assert out[2]["code"] == 415 and out[4]["type"] == "EmptyInput"
    types = {i: handler.context.get_response_content_type(i) for i in range(5)}
    assert types == dict.fromkeys(range(5), "application/json")  # answers and errors alike


@pytest.mark.parametrize("block, key", [(None, "batchsize"), ("handler", "top-k")])
def test_a_misspelt_model_config_key_fails_initialize(default_model_dir, tmp_path, block, key):
    model_dir = shutil.copytree(default_model_dir, tmp_path / "model")
    ctx = make_context(model_dir)
    doc = dict(ctx.model_yaml_config)
    if block:
        doc[block] = {**doc[block], key: 3}
    else:
        doc[key] = 3
    ctx.model_yaml_config = doc
    with pytest.raises(ConfigError, match=f"unknown key '{key}'"):
        torchserve_entry.ImageClassifierHandler().initialize(ctx)


def test_header_driven_routes_stay_with_their_own_request(handler):
    # BaseHandler would route the whole batch by the first request's `explain`/`describe` header.
    good = encode(gradient(), "PNG")
    rows = [{"body": good}, {"body": good}, {"body": good}, {"body": good}]
    headers = [{"explain": "True"}, {}, {"describe": "True"}, {}]
    new_batch(handler.context, len(rows), headers)
    out = handler.handle(rows, handler.context)
    assert statuses(handler.context) == {0: (501, "Not Implemented")}
    assert out[0]["type"] == "NotImplemented" and "/predictions/" in out[0]["message"]
    assert out[1]["predictions"] and out[3]["predictions"] == out[1]["predictions"]
    assert out[2] == handler.describe_handle() and out[2]["model"] == "efficientnet_lite0"


def test_a_bad_environment_override_fails_initialize(default_model_dir, monkeypatch):
    monkeypatch.setenv("HANDLER_THREADS", "two")
    with pytest.raises(ConfigError, match="environment variable HANDLER_THREADS"):
        torchserve_entry.ImageClassifierHandler().initialize(make_context(default_model_dir))


class DimensionRecorder:
    """TorchServe's metrics cache as far as dimensions go: the names each metric was sent with."""

    def __init__(self) -> None:
        self.dimensions: dict[str, list[str]] = {}

    def add_metric(self, name: str, value: float, unit: str, dimensions=None, metric_type=None) -> None:
        self.dimensions[name] = [d.name for d in dimensions]


def test_every_handler_metric_is_declared_with_the_dimensions_it_is_sent_with():
    """The frontend drops a metric whose dimensions differ from config/metrics.yaml's (in order,
    Hostname appended by the frontend): each one the handler emits must match its declaration."""
    declared = {m["name"]: m["dimensions"] for kind in yaml.safe_load(
        (repo.CONFIG_DIR / "metrics.yaml").read_text())["model_metrics"].values() for m in kind}
    recorder = DimensionRecorder()
    emitter = observability.Observability(recorder, "m")
    stages = (observability.PREPROCESS, observability.INFERENCE, observability.POSTPROCESS,
              observability.REQUEST)
    for name in stages:
        with emitter.stage(name):
            pass
    emitter.observe(observability.BATCH_SIZE, 1)
    emitter.image(10, 10)
    emitter.error(BadInput("EmptyInput", "nothing sent"))
    emitter.error(ServerFault())
    assert set(recorder.dimensions) == {*stages, observability.BATCH_SIZE, observability.IMAGE_MEGAPIXELS,
                                        observability.INPUT_ERRORS, observability.SERVER_ERRORS}
    for name, dims in recorder.dimensions.items():
        assert declared[name] == dims, name
