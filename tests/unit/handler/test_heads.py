"""The output head's arithmetic (handler/head.py), the answer it makes (handler/responses.py, the
client's results), test-time augmentation's views, and packaging's refusals of a head that does
not fit the model: each one line, exit status 2 (the CLI's `main`, in this process)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from image_classifier_client import results
from PIL import Image

from handler import responses
from handler.head import Head, answer_probabilities, in_chunks, mean_of_views, views_of
from handler.model_code import PreprocessCodeError, Transform, to_tensor
from handler.protocols.open_inference import v2_prediction
from handler.settings import ConfigError
from scripts import repo
from scripts.packaging import package

LOGITS = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 0.0, 3.0]])


def test_softmax_with_temperature():
    expected = torch.exp(LOGITS / 2) / torch.exp(LOGITS / 2).sum(1, keepdim=True)
    assert torch.allclose(Head("softmax", 2.0).probabilities(LOGITS), expected)


def test_sigmoid_is_each_class_own_probability_and_marks_the_threshold():
    head = Head("sigmoid", 0.5, 0.9)
    probs = head.probabilities(LOGITS)
    assert torch.allclose(probs, 1 / (1 + torch.exp(-LOGITS / 0.5)))
    assert head.predicted(probs, 3).tolist() == [[True, False, False], [False, False, True]]


def test_a_single_logit_is_two_classes_whatever_the_activation():
    logit = torch.tensor([[0.8], [-2.0]])
    p = 1 / (1 + torch.exp(-logit / 2))
    for activation in ("softmax", "sigmoid"):
        head = Head(activation, 2.0, 0.3)
        probs = head.probabilities(logit)
        assert torch.allclose(probs, torch.cat([1 - p, p], 1))
        assert head.predicted(probs, 1).tolist() == [[False, True], [True, False]]  # p 0.60, 0.27
    strict = Head(threshold=0.7)
    assert strict.predicted(strict.probabilities(logit), 1).tolist() == [[True, False], [True, False]]


def test_none_keeps_the_probabilities_and_softmax_marks_nothing():
    probs = torch.tensor([[0.7, 0.2, 0.1]])
    assert torch.equal(Head("none").probabilities(probs), probs)
    assert Head().predicted(probs, 3) is None and Head("none").predicted(probs, 3) is None


@pytest.mark.parametrize("raw, fragment", [
    ({"activation": "relu"}, "activation 'relu' is not one of"),
    ({"temperature": 0}, "temperature must be a number above 0"),
    ({"threshold": 1.5}, "threshold must be a probability"),
    ({"activation": "none", "temperature": 2.0}, "activation none"),
    ({"treshold": 0.5}, "did you mean 'threshold'"),
    ("sigmoid", "`head` must be a mapping"),
])
def test_a_recorded_head_is_read_strictly(raw, fragment):
    with pytest.raises(ConfigError, match="architecture.json") as err:
        Head.from_record(raw, "architecture.json")
    assert fragment in str(err.value)


def test_views_run_in_forwards_of_at_most_the_batch_size_and_never_mix():
    """Three requests of two views, forwards of at most 4 rows: 4 + 2 rows, each request's
    answer the mean of its own two views' probabilities."""
    batch = torch.arange(3 * 2 * 3, dtype=torch.float32).reshape(3, 2, 3, 1, 1)
    seen = []

    def run(rows: torch.Tensor) -> torch.Tensor:
        seen.append(rows.shape[0])
        return rows.flatten(1)

    probs, width = answer_probabilities(run, batch, Head(), 4)
    assert seen == [4, 2] and width == 3
    for n in range(3):
        views = torch.softmax(batch[n].flatten(1), 1)
        assert torch.allclose(probs[n], views.mean(0))
    assert views_of(torch.zeros(5, 3, 2, 2))[1] == 1
    column = torch.arange(5.0)[:, None]
    assert torch.equal(in_chunks(lambda r: r * 2, column, 2), column * 2)
    assert torch.equal(mean_of_views(column[1:] * 2 - 1, 2), torch.tensor([[2.0], [6.0]]))


def test_the_answer_lists_every_predicted_class_beyond_top_k():
    probs = torch.tensor([[0.9, 0.8, 0.7, 0.1]])
    (best,) = responses.ranked(probs, 1, probs >= 0.5)
    assert best.indices == [0, 1, 2] and best.predicted == [True, True, True]
    (plain,) = responses.ranked(probs, 2)
    assert plain.indices == [0, 1] and plain.predicted is None


def test_open_inference_and_the_client_carry_predicted():
    body = responses.prediction([0.9, 0.2], [1, 0], {"0": "no", "1": "yes"}, "m", "1", [True, False])
    v2 = v2_prediction(body, "r")
    outputs = {o["name"]: o for o in v2["outputs"]}
    assert outputs["predicted"] == {"name": "predicted", "datatype": "BOOL", "shape": [2],
                                    "data": [True, False]}
    for _, _, preds in (results.from_v1(body), results.from_v2(v2)):
        assert [p.predicted for p in preds] == [True, False]
        assert results.Classification("m", "1", preds).predicted == ("yes",)
    softmax = responses.prediction([0.9], [1], {}, "m", "1")
    assert "predicted" not in softmax["predictions"][0]
    assert "predicted" not in {o["name"] for o in v2_prediction(softmax, "r")["outputs"]}
    assert results.Classification("m", "1", results.from_v1(softmax)[2]).predicted == ("1",)


def test_a_preprocessing_module_may_return_views():
    img = Image.new("RGB", (8, 8))
    views = to_tensor(Transform(lambda im: np.zeros((2, 3, 4, 4), np.float32)), img)
    assert tuple(views.shape) == (2, 3, 4, 4)
    with pytest.raises(PreprocessCodeError, match="the validated shape is"):
        to_tensor(Transform(lambda im: np.zeros((3, 3, 4, 4), np.float32)), img, (2, 3, 4, 4))
    with pytest.raises(PreprocessCodeError, match="not C x H x W"):
        to_tensor(Transform(lambda im: np.zeros((1, 2, 3, 4, 4), np.float32)), img)


NAME = "heads_errors_test"
NET = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, classes: int = 3, end: str = "logits"):
        super().__init__()
        self.head = nn.Linear(3, classes)
        self.end = end

    def forward(self, x):
        out = self.head(x.mean((2, 3)))
        if self.end == "softmax":
            return torch.softmax(out, 1)
        return torch.sigmoid(out) if self.end == "sigmoid" else out
'''


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("heads_errors")
    (tmp / "net.py").write_text(NET)
    for count in (2, 3):
        (tmp / f"labels{count}.json").write_text(json.dumps([f"c{i}" for i in range(count)]))
    yield tmp
    shutil.rmtree(repo.BUILD_DIR / NAME, ignore_errors=True)


def refusal(files, capsys, labels: int, kwargs: dict, *flags: str) -> str:
    store = files / "store"
    code = package.main(["--model-file", str(files / "net.py"), "--model-kwargs", json.dumps(kwargs),
                         "--checkpoint", "none", "--labels", str(files / f"labels{labels}.json"),
                         "--model-name", NAME, "--format", "onnx", "--export-path", str(store), *flags])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err[-1500:]
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and not list(store.glob("*.mar")), err[-1500:]
    return lines[-1]


@pytest.mark.parametrize("labels, kwargs, flags, fragments", [
    (3, {"classes": 1}, [], ["give 3", "one output", "two names"]),
    (3, {"classes": 3}, ["--activation", "none"],
     ["range over", "not probabilities", "--activation softmax"]),
    (3, {"classes": 3, "end": "sigmoid"}, ["--activation", "none"], ["not 1", "--activation sigmoid"]),
    (2, {"classes": 1, "end": "sigmoid"}, ["--activation", "none"],
     ["width 1", "drop the model's final sigmoid"]),
    (3, {"classes": 3}, ["--threshold", "0.7"], ["--threshold", "add --activation sigmoid"]),
    (3, {"classes": 3}, ["--temperature", "0"], ["temperature must be a number above 0"]),
    (3, {"classes": 3, "end": "softmax"}, ["--activation", "none", "--temperature", "2"],
     ["activation none"]),
], ids=["binary-labels", "none-logits", "none-sigmoid-rows", "none-single-output", "threshold-softmax",
        "temperature-zero", "none-temperature"])
def test_a_head_that_does_not_fit_is_refused_at_packaging(files, capsys, labels, kwargs, flags, fragments):
    message = refusal(files, capsys, labels, kwargs, *flags)
    for fragment in fragments:
        assert fragment in message, message
