"""Freezing for fine-tuning: after real SGD steps in training mode, every frozen tensor
(parameters and batch-norm statistics) is bit-identical and every unfrozen one has moved.
Which keys are frozen is written out by hand from the torchvision layouts, not asked of the
code under test."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F

from rlgen.vision.backbones import create_model
from rlgen.vision.transfer import (
    FreezeError,
    backbone_modules,
    freeze,
    keep_frozen_bn_in_eval,
    stage_modules,
    trainable_parameters,
    trunk,
)

#: what each spec freezes, as state-dict key prefixes (the rest must train)
FROZEN = {
    ("resnet18", "backbone"): ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4."),
    ("resnet18", "stages:2"): ("conv1.", "bn1.", "layer1."),  # stem, layer1
    ("vgg11_bn", "backbone"): ("features.",),
    # config A with BN: 0 conv, 1 bn, 2 relu, 3 pool | 4 conv, 5 bn, 6 relu, 7 pool | 8 conv ...
    ("vgg11_bn", "stages:2"): ("features.0.", "features.1.", "features.4.", "features.5."),
}
BN_STATS = ("running_mean", "running_var", "num_batches_tracked")


def sgd_steps(model: torch.nn.Module, steps: int = 1, seed: int = 0) -> None:
    """Plain SGD steps on random 32x32 images, in training mode as a loop would run (one step
    moves every weight with a gradient and every batch norm's statistics in training mode)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (4,), generator=g)
    model.train()  # after freeze(): frozen batch norms must stay in eval mode regardless
    opt = torch.optim.SGD(trainable_parameters(model), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def check_frozen(before: dict, after: dict, frozen: tuple[str, ...]) -> None:
    """Frozen keys bit-identical; unfrozen weights and batch-norm statistics all changed."""
    assert any(k.startswith(frozen) for k in before)
    for k, old in before.items():
        if k.startswith(frozen):
            assert torch.equal(after[k], old), f"frozen {k} changed"
        elif k.endswith(("weight",) + BN_STATS):
            # (Conv biases right before a batch norm get a ~0 gradient: not checked.)
            assert not torch.equal(after[k], old), f"unfrozen {k} did not change"


@pytest.fixture(scope="module")
def vgg11_bn():
    # 133M parameters (the 4096-wide classifier): built once; freeze() resets it per test.
    torch.manual_seed(0)
    return create_model("vgg11_bn", num_classes=10)


def build(name: str, vgg11_bn) -> torch.nn.Module:
    if name == "vgg11_bn":
        return vgg11_bn
    torch.manual_seed(0)
    return create_model(name, num_classes=10)


@pytest.mark.parametrize("name,spec", list(FROZEN))
def test_frozen_tensors_do_not_move(name, spec, vgg11_bn):
    model = build(name, vgg11_bn)
    frozen = FROZEN[name, spec]
    freeze(model, spec)
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert trainable == {k for k, _ in model.named_parameters() if not k.startswith(frozen)}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sgd_steps(model, steps=2)
    check_frozen(before, model.state_dict(), frozen)


def test_frozen_batch_norm_survives_train_deepcopy_and_pickle():
    model = create_model("resnet18", num_classes=10)
    assert freeze(model, "stages:2") == ["conv1", "bn1", "layer1"]
    for copied in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        before = {k: v.clone() for k, v in copied.state_dict().items()}
        sgd_steps(copied)
        check_frozen(before, copied.state_dict(), FROZEN["resnet18", "stages:2"])
    assert model.training and not model.layer1[0].bn1.training  # eval while held
    model.eval()
    model.train()
    assert model.layer1[0].bn1.training  # model.train() reaches it: the hook re-holds it ...
    model(torch.randn(2, 3, 32, 32))
    assert not model.layer1[0].bn1.training  # ... on every forward


def test_unfreeze_with_none():
    model = create_model("resnet18", num_classes=10)
    freeze(model, "backbone")
    assert freeze(model, "none") == []
    assert all(p.requires_grad for p in model.parameters())
    assert len(trainable_parameters(model)) == len(list(model.parameters()))
    before = model.bn1.running_mean.clone()
    sgd_steps(model)
    assert not torch.equal(model.bn1.running_mean, before)  # released: statistics update again


def test_keep_frozen_bn_in_eval_for_hand_frozen_models():
    model = create_model("resnet18", num_classes=10)
    model.layer1.requires_grad_(False)
    assert keep_frozen_bn_in_eval(model) == 4  # layer1: 2 blocks x 2 batch norms
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sgd_steps(model)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items() if k.startswith("layer1."))
    assert not torch.equal(after["bn1.running_mean"], before["bn1.running_mean"])


@pytest.mark.parametrize("name,stages", [("resnet18", 5), ("vgg11_bn", 5), ("alexnet", 3),
                                         ("googlenet", 5), ("mnist_deep", 2)])
def test_stage_maps_cover_the_backbone(name, stages):
    with torch.device("meta"):  # structure only: no memory, no initialisation
        model = create_model(name)
    stage_params = [{id(p) for m in s for p in m.parameters()} for s in stage_modules(trunk(model))]
    assert len(stage_params) == stages == len(trunk(model).feature_info)
    assert all(stage_params) and sum(map(len, stage_params)) == len(set().union(*stage_params))
    backbone = {id(p) for m in backbone_modules(model) for p in m.parameters()}
    assert set().union(*stage_params) == backbone


@pytest.mark.parametrize("spec,message", [
    ("stages:6", r"'resnet18' has 5 stages \(stem, layer1, layer2, layer3, layer4\); "
                 r"expected stages:N with 0 <= N <= 5"),
    ("stages:-1", "freeze spec must be 'none', 'backbone' or 'stages:N'"),
    ("stages:two", "freeze spec must be 'none', 'backbone' or 'stages:N'"),
    ("head", "freeze spec must be 'none', 'backbone' or 'stages:N'"),
])
def test_bad_specs(spec, message):
    model = create_model("resnet18", num_classes=10)
    with pytest.raises(FreezeError, match=message) as err:
        freeze(model, spec)
    assert "\n" not in str(err.value) and isinstance(err.value, ValueError)
    assert all(p.requires_grad for p in model.parameters())  # nothing half-frozen


def test_backbone_without_stage_map():
    model = create_model("lenet5")
    with pytest.raises(FreezeError, match="'lenet5' does not map its stages.*'backbone'"):
        freeze(model, "stages:1")
    assert freeze(model, "backbone") == ["backbone"]
    assert trainable_parameters(model) and all(
        not p.requires_grad for p in model.backbone.parameters())
    with pytest.raises(FreezeError, match="expected an rlgen Backbone"):
        freeze(torch.nn.Linear(2, 2), "backbone")
