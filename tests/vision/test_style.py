"""Gatys et al. style transfer (rlgen.vision.style): every loss term against a computation by
hand on the tapped features, the authors' weights, the loss going down under L-BFGS and Adam,
and ``rlgen style`` end to end on tiny images (random VGG-11 weights, which the command refuses
without --allow-random-weights)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import rlgen.vision.style as style_module
from rlgen.cli import main
from rlgen.cli_spec import ToolSpec
from rlgen.errors import InputError
from rlgen.registry import TOOLS
from rlgen.vision.backbones import create_backbone
from rlgen.vision.style import (
    GatysLoss,
    StyleConfig,
    initial_image,
    run_style,
    style_network,
    style_transfer,
    total_variation,
)

# VGG-11 (cfg A) indices in torchvision's `features`, counted by hand:
# conv1_1 relu1_1 pool1 | conv2_1 relu2_1 pool2 | conv3_1 relu3_1 conv3_2 relu3_2 pool3 |
# conv4_1 relu4_1 conv4_2 relu4_2 pool4 | conv5_1 relu5_1 ...
VGG11_INDEX = {"relu1_1": 1, "relu2_1": 4, "relu3_1": 7, "relu4_1": 12, "relu4_2": 14,
               "relu5_1": 17}
STYLE = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]


@pytest.fixture(scope="module")
def vgg11():
    torch.manual_seed(0)
    return create_backbone("vgg11")


def pictures(h: int = 32, w: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth colour ramp (content) and coloured stripes (style), (3, h, w) in [0, 1]."""
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    content = torch.stack([x, y, 1 - x * y])
    style = torch.stack([(torch.sin(40 * x) > 0).float(), 0.8 * (torch.sin(25 * y) > 0).float(),
                         torch.full_like(x, 0.3)])
    return content, style


def features_by_hand(vgg, image: torch.Tensor) -> dict[str, torch.Tensor]:
    """The responses at VGG11_INDEX of a (1, 3, H, W) image in [0, 1], layer by layer."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    h, out = (image - mean) / std, {}
    for i in range(max(VGG11_INDEX.values()) + 1):
        h = vgg.features[i](h)
        out.update({name: h.clone() for name, index in VGG11_INDEX.items() if index == i})
    return out


def gram_by_hand(f: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ihw,jhw->ij", f[0], f[0])


@pytest.mark.parametrize("style_size", [(32, 32), (40, 24)])
def test_each_loss_term_matches_a_computation_by_hand(vgg11, style_size):
    content, _ = pictures()
    _, style = pictures(*style_size)
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    network = style_network(vgg11, ["relu4_2", *STYLE])
    loss = GatysLoss(network, content[None], style[None], content_weight=2.0,
                     style_weight=1e3, tv_weight=0.5)
    with torch.no_grad():
        terms = loss(image)
        got, p, a = (features_by_hand(vgg11, t[None] if t.dim() == 3 else t)
                     for t in (image, content, style))
    n, m = got["relu4_2"].shape[1], got["relu4_2"][0, 0].numel()
    content_term = 2.0 * ((got["relu4_2"] - p["relu4_2"]) ** 2).sum() / (n * m)
    torch.testing.assert_close(terms["content"], content_term)
    for name in STYLE:
        f, s = got[name], a[name]
        n, m, m_style = f.shape[1], f[0, 0].numel(), s[0, 0].numel()
        if m == m_style:  # the paper's equation 4 as written
            e = ((gram_by_hand(f) - gram_by_hand(s)) ** 2).sum() / (4 * n**2 * m**2)
        else:  # each Gram matrix over its own image's positions
            e = ((gram_by_hand(f) / m - gram_by_hand(s) / m_style) ** 2).sum() / (4 * n**2)
        torch.testing.assert_close(terms[f"style/{name}"], 1e3 / n**2 * e, rtol=1e-4, atol=0)
        assert terms[f"style/{name}"] > 0
    tv = (torch.diff(image, dim=2) ** 2).sum() + (torch.diff(image, dim=3) ** 2).sum()
    torch.testing.assert_close(terms["tv"], 0.5 * tv / image.numel())
    total = terms["content"] + sum(terms[f"style/{name}"] for name in STYLE) + terms["tv"]
    torch.testing.assert_close(terms["style"] + terms["content"] + terms["tv"], total)
    torch.testing.assert_close(terms["total"], total)


def test_total_variation_by_hand():
    x = torch.arange(24, dtype=torch.float32).view(1, 2, 3, 4) ** 1.5
    expected = 0.0
    for c in range(2):
        for i in range(3):
            for j in range(4):
                if i + 1 < 3:
                    expected += float(x[0, c, i + 1, j] - x[0, c, i, j]) ** 2
                if j + 1 < 4:
                    expected += float(x[0, c, i, j + 1] - x[0, c, i, j]) ** 2
    assert float(total_variation(x)) == pytest.approx(expected / 24, rel=1e-6)


def test_vgg19_trunk_ends_at_relu5_1_with_the_authors_layer_weights():
    with torch.device("meta"):  # shapes only
        vgg = create_backbone("vgg19")
        content, style = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 48, 32)
        network = style_network(vgg, ["relu4_2", *STYLE])
        loss = GatysLoss(network, content, style)
    assert len(network.features) == 30  # relu5_1 is features[29]
    assert loss.taps.modules["relu4_2"] is network.features[22]
    assert loss.taps.modules["relu5_1"] is network.features[29]
    assert network.features[21].in_channels == network.features[21].out_channels == 512
    channels = dict(zip(STYLE, (64, 128, 256, 512, 512)))
    assert loss.layer_weights == {name: 1e3 / n**2 for name, n in channels.items()}
    assert not network.training
    assert not any(p.requires_grad for p in network.parameters())
    assert all(p.requires_grad for p in vgg.parameters())  # the caller's network is untouched
    avg = style_network(vgg, ["relu4_2"], pooling="avg")
    assert [type(m).__name__ for m in avg.features].count("AvgPool2d") == 3
    assert "MaxPool2d" not in [type(m).__name__ for m in avg.features]


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_the_total_loss_decreases(vgg11, optimizer):
    content, style = pictures()
    steps_seen = []
    result = style_transfer(content, style, vgg11, steps=8, optimizer=optimizer,
                            callback=lambda step, image: steps_seen.append(step))
    history = result.history
    assert [h["step"] for h in history] == list(range(9)) and steps_seen == list(range(1, 9))
    assert history[0]["content"] == 0  # it starts from the content image
    assert history[-1]["total"] < 0.85 * history[0]["total"]
    assert history[-1]["style"] < 0.85 * history[0]["style"]
    assert result.image.shape == (3, 32, 32)
    assert float(result.image.min()) >= 0 and float(result.image.max()) <= 1
    with torch.no_grad():  # the last entry is the returned image's loss
        network = style_network(vgg11, ["relu4_2", *STYLE])
        final = GatysLoss(network, content[None], style[None])(result.image[None])
    assert float(final["total"]) == pytest.approx(history[-1]["total"], rel=1e-4)


def test_any_backbone_works_by_module_names():
    torch.manual_seed(0)
    resnet = create_backbone("resnet18")
    content, style = pictures()
    result = style_transfer(content, style, resnet, steps=6, optimizer="adam",
                            content_layer="layer3", style_layers=["layer1", "layer2.0.conv1"])
    assert set(result.history[0]) >= {"style/layer1", "style/layer2.0.conv1", "content"}
    assert result.history[-1]["total"] < 0.85 * result.history[0]["total"]
    with pytest.raises(InputError, match="--pooling avg needs a VGG-like network"):
        style_transfer(content, style, resnet, steps=1, content_layer="layer3",
                       style_layers=["layer1"], pooling="avg")


def test_initial_images():
    content, style = pictures(32, 24)
    _, wide = pictures(20, 40)
    assert torch.equal(initial_image(content[None], style[None], "content"), content[None])
    assert initial_image(content[None], wide[None], "style").shape == (1, 3, 32, 24)
    noise = initial_image(content[None], style[None], "noise", seed=3)
    assert torch.equal(noise, initial_image(content[None], style[None], "noise", seed=3))
    assert not torch.equal(noise, initial_image(content[None], style[None], "noise", seed=4))
    assert float(noise.min()) >= 0 and float(noise.max()) <= 1


# -- rlgen style ----------------------------------------------------------------------------
def write_pictures(folder) -> tuple[str, str]:
    content, style = pictures(40, 48)
    _, style = pictures(48, 40)
    paths = []
    for name, image in (("a.png", content), ("b.png", style)):
        array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(array).save(folder / name)
        paths.append(str(folder / name))
    return paths[0], paths[1]


def style_args(tmp_path, *extra: str) -> list[str]:
    content, style = write_pictures(tmp_path)
    return ["style", "--content", content, "--style", style, "--out",
            str(tmp_path / "out" / "c.png"), "--steps", "4", "--size", "32", "--model", "vgg11",
            "--device", "cpu", *extra]


def test_rlgen_style_writes_the_result_the_steps_and_the_side_by_side(tmp_path, capsys):
    assert main(style_args(tmp_path, "--save-every", "2", "--allow-random-weights")) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    out = tmp_path / "out"
    assert summary["out"] == str(out / "c.png")
    assert summary["intermediates"] == [str(out / "c_step00002.png"), str(out / "c_step00004.png")]
    assert summary["side_by_side"] == str(out / "c_side_by_side.png")
    assert summary["losses"]["total"] < summary["initial_loss"]
    assert set(summary["losses"]) >= {"total", "content", "style", "tv", "style/relu5_1"}
    # 40x48 content -> 27x32; 48x40 style -> 32x27, shown at the content's height: 27x23.
    assert Image.open(out / "c.png").size == (32, 27)
    assert Image.open(out / "c_step00002.png").size == (32, 27)
    assert Image.open(out / "c_side_by_side.png").size == (32 + 4 + 23 + 4 + 32, 27)
    result = np.asarray(Image.open(out / "c.png"), dtype=np.float32)
    last_step = np.asarray(Image.open(out / "c_step00004.png"), dtype=np.float32)
    assert np.array_equal(result, last_step)
    panel = np.asarray(Image.open(out / "c_side_by_side.png"), dtype=np.float32)
    assert np.array_equal(panel[:, -32:], result)


def test_rlgen_style_refuses_random_weights(tmp_path, capsys):
    assert main(style_args(tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert "ImageNet-trained VGG-19" in err and "--weights torchvision:vgg19" in err
    assert "--allow-random-weights" in err
    assert not (tmp_path / "out").exists()


def test_rlgen_style_loads_a_weights_file(tmp_path, capsys, monkeypatch):
    torch.manual_seed(123)
    state = create_backbone("vgg11").state_dict()
    # A torchvision classifier file also holds the classifier, which style transfer ignores.
    state["classifier.6.bias"] = torch.zeros(1000)
    torch.save(state, tmp_path / "vgg11.pth")
    used = []

    def spy(content, style, vgg, *args, **kwargs):
        used.append(vgg)
        return style_transfer(content, style, vgg, *args, **kwargs)

    monkeypatch.setattr(style_module, "style_transfer", spy)
    assert main(style_args(tmp_path, "--weights", str(tmp_path / "vgg11.pth"))) == 0
    assert json.loads(capsys.readouterr().out)["weights"] == str(tmp_path / "vgg11.pth")
    loaded = used[0].state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)

    del state["features.16.weight"]  # conv5_1: the file does not fit
    torch.save(state, tmp_path / "broken.pth")
    assert main(style_args(tmp_path, "--weights", str(tmp_path / "broken.pth"))) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--weights" in err and "features.16.weight" in err


@pytest.mark.parametrize("flags, message", [
    (["--style-layers", "relu1_1,conv4_5"], "--style-layers: unknown layer 'conv4_5'"),
    (["--content-layer", "relu9_1"], "--content-layer: unknown layer 'relu9_1'"),
    (["--size", "8"], "need at least 16 pixels a side"),
    (["--tv-weight", "-1"], "--tv-weight must be a finite number >= 0"),
])
def test_rlgen_style_bad_input_is_one_line_naming_the_flag(tmp_path, capsys, flags, message):
    assert main(style_args(tmp_path, "--allow-random-weights", *flags)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err


def test_style_is_a_registered_tool_with_its_flags(capsys):
    spec = TOOLS.create("style")
    assert isinstance(spec, ToolSpec) and spec.config is StyleConfig and spec.run is run_style
    assert main(["list", "tools"]) == 0
    assert "style" in capsys.readouterr().out
    assert main(["style", "--help"]) == 0
    help_text = capsys.readouterr().out
    for flag in ("--content", "--style", "--out", "--steps", "--size", "--device", "--weights",
                 "--allow-random-weights", "--save-every", "--content-layer", "--style-layers",
                 "--style-weight", "--content-weight", "--tv-weight", "--init", "--seed",
                 "--optimizer", "--lr"):
        assert flag in help_text
    with pytest.raises(InputError, match="--save-every"):
        StyleConfig(content="a.png", style="b.png", out="c.png", save_every=-1,
                    allow_random_weights=True)
