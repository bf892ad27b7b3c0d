"""The architecture loads the packaged ImageNet weights and classifies real photos correctly."""

import pytest
import torch

from handler.preprocessing import PreprocessConfig
from scripts import repo
from scripts.packaging.export import (
    build_model,
    default_checkpoint,
    load_checkpoint,
    to_torchscript,
    validation_batch,
)
from scripts.packaging.sample_photos import EXPECTED_TOP1

CFG = PreprocessConfig.load(repo.CONFIG_DIR / repo.DEFAULT_MODEL / "preprocess.json")


@pytest.fixture(scope="module")
def eager():
    model = build_model(repo.DEFAULT_MODEL, 1000)
    load_checkpoint(model, default_checkpoint())  # strict: raises on any key or shape mismatch
    return model.eval()


@pytest.fixture(scope="module")
def batch():
    return validation_batch(CFG)


def test_state_dict_keys_match_exactly(eager):
    sd = torch.load(default_checkpoint(), map_location="cpu", weights_only=True)
    assert set(sd) == set(eager.state_dict())
    assert all(sd[k].shape == v.shape for k, v in eager.state_dict().items())


def test_scripted_matches_eager(eager, batch):
    _, images = batch
    scripted = to_torchscript(eager, images[:1])
    with torch.inference_mode():
        diff = (scripted(images) - eager(images)).abs().max().item()
    assert diff < 1e-4


@pytest.mark.parametrize("name", sorted(EXPECTED_TOP1))
def test_real_photo_top1(eager, batch, name):
    names, images = batch
    with torch.inference_mode():
        probs = eager(images[names.index(name)][None]).softmax(1)[0]
    top5 = probs.topk(5).indices.tolist()
    assert top5[0] in EXPECTED_TOP1[name], f"{name}: top-5 {top5}"
    assert probs[top5[0]] > 0.25


def test_cat_top5_is_all_cats_mostly(eager, batch):
    names, images = batch
    with torch.inference_mode():
        top3 = eager(images[names.index("cat")][None]).topk(3).indices[0].tolist()
    assert set(top3) <= EXPECTED_TOP1["cat"]


def test_fixed_pads_equal_the_computed_ones(eager, batch):
    """fix_input_size (what the ONNX export uses) pads exactly as the per-input computation, and
    every frozen pad is TensorFlow's SAME for that layer's input size."""
    import copy

    from scripts.packaging.architectures.efficientnet_lite0 import same_pads

    _, images = batch
    fixed = copy.deepcopy(eager)
    fixed.fix_input_size(CFG.input_size)
    assert fixed._fixed_pads[0] == same_pads(224, 224, 3, 2) == [0, 1, 0, 1]
    assert sum(p != [] for p in fixed._fixed_pads) == len(fixed._blocks) + 1
    with torch.inference_mode():
        assert torch.equal(fixed(images), eager(images))


def test_model_scripts_without_falling_back_to_tracing(eager, batch):
    """to_torchscript traces when scripting fails, which would hide a model TorchScript cannot
    compile (a trace freezes the pads of one input size): script it directly."""
    import warnings

    _, images = batch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(eager)
    with torch.inference_mode():
        assert (scripted(images) - eager(images)).abs().max().item() < 1e-4
