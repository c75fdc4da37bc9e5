"""Loading torchvision-format state dicts: key names and shapes written out by hand from
torchvision's layout (so these tests do not compare rlgen with itself), round trips through
files, the usual checkpoint wrappers, and clear errors for everything that does not fit."""

from __future__ import annotations

import pytest
import torch

from rlgen.vision.backbones import create_backbone, create_model
from rlgen.vision.backbones.resnet import resnet18
from rlgen.vision.backbones.weights import (
    WeightsError,
    WeightsFileNotFoundError,
    compare_state_dicts,
    load_weights,
)


def _bn(shapes: dict, prefix: str, c: int) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{prefix}.{name}"] = (c,)
    shapes[f"{prefix}.num_batches_tracked"] = ()


def torchvision_resnet18_shapes(num_classes: int = 1000) -> dict[str, tuple[int, ...]]:
    """torchvision.models.resnet18().state_dict() key -> shape, written out from its layout."""
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}
    _bn(shapes, "bn1", 64)
    inplanes = 64
    for i, planes in enumerate((64, 128, 256, 512), start=1):
        for j in range(2):
            p = f"layer{i}.{j}"
            cin = inplanes if j == 0 else planes
            shapes[f"{p}.conv1.weight"] = (planes, cin, 3, 3)
            _bn(shapes, f"{p}.bn1", planes)
            shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            _bn(shapes, f"{p}.bn2", planes)
            if j == 0 and planes != inplanes:
                shapes[f"{p}.downsample.0.weight"] = (planes, inplanes, 1, 1)
                _bn(shapes, f"{p}.downsample.1", planes)
        inplanes = planes
    shapes["fc.weight"] = (num_classes, 512)
    shapes["fc.bias"] = (num_classes,)
    return shapes


def torchvision_vgg16_shapes() -> dict[str, tuple[int, ...]]:
    """torchvision.models.vgg16().state_dict(): convs at their index in ``features``."""
    widths = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M"] + [512, 512, 512, "M"] * 2
    shapes, index, cin = {}, 0, 3
    for w in widths:
        if w != "M":
            shapes[f"features.{index}.weight"] = (w, cin, 3, 3)
            shapes[f"features.{index}.bias"] = (w,)
            cin, index = w, index + 2  # conv, relu
        else:
            index += 1
    for i, (n_out, n_in) in zip((0, 3, 6), [(4096, 25088), (4096, 4096), (1000, 4096)]):
        shapes[f"classifier.{i}.weight"] = (n_out, n_in)
        shapes[f"classifier.{i}.bias"] = (n_out,)
    return shapes


def random_state(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        k: torch.randint(0, 100, s, generator=g) if k.endswith("num_batches_tracked")
        else torch.randn(s, generator=g)
        for k, s in shapes.items()
    }  # fmt: skip


@pytest.fixture(scope="module")
def tv_state():
    return random_state(torchvision_resnet18_shapes())


def test_hand_written_layouts_match(tv_state):
    assert len(tv_state) == 122
    assert tv_state["layer4.1.bn2.running_var"].shape == (512,)
    assert tv_state["fc.weight"].shape == (1000, 512)
    report = compare_state_dicts(create_model("resnet18"), tv_state)
    assert report.ok, report
    vgg_shapes = torchvision_vgg16_shapes()
    assert vgg_shapes["features.28.weight"] == (512, 512, 3, 3)
    with torch.device("meta"):
        vgg = create_model("vgg16")
    assert {k: tuple(v.shape) for k, v in vgg.state_dict().items()} == vgg_shapes


def test_round_trip_through_a_file(tmp_path, tv_state):
    path = tmp_path / "resnet18-torchvision.pth"
    torch.save(tv_state, path)
    for model in (create_model("resnet18", weights=path), resnet18(weights=str(path))):
        loaded = model.state_dict()
        assert list(loaded) == list(tv_state)
        for k, v in tv_state.items():
            assert torch.equal(loaded[k], v), k
    # And back: a file saved from rlgen has the same keys and values.
    again = tmp_path / "again.pth"
    torch.save(model.state_dict(), again)
    assert torch.equal(torch.load(again, weights_only=True)["layer3.0.conv1.weight"],
                       tv_state["layer3.0.conv1.weight"])  # fmt: skip


@pytest.mark.parametrize("wrap", ["state_dict", "model", "module."])
def test_checkpoint_wrappers(tmp_path, tv_state, wrap):
    if wrap == "module.":  # DistributedDataParallel's prefix
        obj = {f"module.{k}": v for k, v in tv_state.items()}
    else:
        obj = {wrap: tv_state, "epoch": 90, "optimizer": {"lr": torch.tensor(0.1)}}
    path = tmp_path / "ckpt.pt"
    torch.save(obj, path)
    model = create_model("resnet18")
    assert load_weights(model, path).ok
    assert torch.equal(model.fc.weight, tv_state["fc.weight"])


def test_renamed_key_is_listed(tmp_path, tv_state):
    state = dict(tv_state)
    state["layer4.1.bn2.running_variance"] = state.pop("layer4.1.bn2.running_var")
    path = tmp_path / "renamed.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as err:
        create_model("resnet18", weights=path)
    msg = str(err.value)
    assert str(path) in msg and "'resnet18'" in msg
    assert "1 missing keys" in msg and "layer4.1.bn2.running_var\n" in msg
    assert "1 unexpected keys" in msg and "layer4.1.bn2.running_variance" in msg


def test_wrong_shape_is_listed_with_both_shapes(tmp_path, tv_state):
    state = dict(tv_state)
    state["fc.weight"], state["fc.bias"] = torch.randn(10, 512), torch.randn(10)
    path = tmp_path / "ten_classes.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as err:
        create_model("resnet18", weights=path)
    msg = str(err.value)
    assert "2 shape mismatches" in msg
    assert "fc.weight: model [1000, 512] vs file [10, 512]" in msg
    assert "fc.bias: model [1000] vs file [10]" in msg
    assert "strict=False" in msg  # the hint for a new head
    # strict=False loads the rest and reports the head.
    model = create_model("resnet18")
    fc_before = model.fc.weight.clone()
    report = load_weights(model, path, strict=False)
    assert [k for k, *_ in report.mismatched] == ["fc.weight", "fc.bias"]
    assert torch.equal(model.fc.weight, fc_before)
    assert torch.equal(model.conv1.weight, state["conv1.weight"])


def test_classifier_file_into_a_backbone(tv_state):
    backbone = create_backbone("resnet18")
    report = load_weights(backbone, tv_state, strict=False)
    assert report.unexpected == ["fc.weight", "fc.bias"] and not report.missing
    assert torch.equal(backbone.layer4[1].bn2.running_var, tv_state["layer4.1.bn2.running_var"])
    with pytest.raises(WeightsError, match="2 unexpected keys"):
        load_weights(backbone, tv_state)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(WeightsFileNotFoundError, match="nope.pth") as err:
        create_model("resnet18", weights=path)
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, ValueError)


class Arbitrary:  # a pickled object that weights_only=True must refuse to build
    pass


@pytest.mark.parametrize(
    "content,message",
    [
        ([1, 2, 3], "does not hold a state dict"),
        ({}, "does not hold a state dict"),
        ({"conv1.weight": 3}, "not name -> tensor"),
        ("garbage", "could not be read"),
        (Arbitrary(), "could not be read"),
    ],
)
def test_not_a_state_dict(tmp_path, content, message):
    path = tmp_path / "bad.pth"
    if content == "garbage":
        path.write_bytes(b"this is not a torch file")
    else:
        torch.save(content, path)
    with pytest.raises(WeightsError, match=message) as err:
        load_weights(create_model("resnet18", num_classes=2), path)
    assert str(path) in str(err.value)


def test_googlenet_aux_hint():
    with torch.device("meta"):
        with_aux = create_model("googlenet", aux_logits=True).state_dict()
        plain = create_model("googlenet")
    with pytest.raises(WeightsError, match="aux_logits=True"):
        load_weights(plain, with_aux)
