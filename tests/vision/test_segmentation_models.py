"""Segmentation models: FCN-32s/16s/8s, SegNet, U-Net (original and on any encoder).

Cost control: parameter counts of the full-size networks (FCN: 134M) are taken on the ``meta``
device; forward checks of FCN and SegNet run on a slim VGG (``TINY``: widths 4-8 instead of
64-512) that has VGG-16's exact geometry (five 2x2 pools, same-padded 3x3 convs), so crops,
offsets, padding and unpooling run the same code; SegNet's full VGG-16-BN and the full U-Net
each run once.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rlgen.registry import UnknownNameError
from rlgen.vision.backbones import (
    BACKBONES,
    Backbone,
    FeatureInfo,
    create_backbone,
    create_model,
    register_backbone,
)
from rlgen.vision.backbones.vgg import VGG, VGGBackbone
from rlgen.vision.backbones.weights import WeightsError, compare_state_dicts
from rlgen.vision.segmentation.models import (
    FCN,
    SEGMENTATION_MODELS,
    SegmentationInputError,
    bilinear_upsampling,
    build_segmentation_model,
    load_vgg16_classifier,
)

NAMES = ["fcn32s", "fcn16s", "fcn8s", "segnet", "unet"]
TINY = [4, "M", 4, "M", 8, "M", 8, "M", 8, "M"]  # VGG's five blocks, slim


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def tiny_vgg(in_channels: int = 3, batch_norm: bool = False) -> VGGBackbone:
    backbone = VGGBackbone(TINY, batch_norm, in_channels)
    backbone.name = "tiny_vgg"
    return backbone


def small_model(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """``name`` at a small width; FCN's zero-initialised score layers get random weights so
    that every path shows in the output."""
    torch.manual_seed(0)
    if name.startswith("fcn"):
        model = build_segmentation_model(name, num_classes, in_channels,
                                         encoder=tiny_vgg(in_channels), fc_channels=16)
        for m in model.modules():
            if isinstance(m, nn.Conv2d) and m.weight.abs().sum() == 0:
                nn.init.normal_(m.weight, 0, 0.3)
    elif name == "segnet":
        model = build_segmentation_model(name, num_classes, in_channels,
                                         encoder=tiny_vgg(in_channels, batch_norm=True))
    else:
        model = build_segmentation_model(name, num_classes, in_channels, base_channels=4)
    return model.eval()


# --------------------------------------------------------------------------------------------
# Registry, shapes, padding, errors (every model)
# --------------------------------------------------------------------------------------------

def test_registry_lists_the_five_models_and_names_the_closest_on_a_typo():
    listed = dict(SEGMENTATION_MODELS.list())
    assert set(NAMES) <= set(listed) and all(listed[n] for n in NAMES)
    with pytest.raises(UnknownNameError, match="closest: unet"):
        build_segmentation_model("unet2", 3)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("in_channels,num_classes,size", [
    (1, 1, (45, 61)), (4, 3, (64, 64)), (3, 21, (33, 96))])
def test_logits_have_the_input_size(name, in_channels, num_classes, size):
    model = small_model(name, num_classes, in_channels)
    assert model.name == name and model.in_channels == in_channels
    assert model.num_classes == num_classes
    x = torch.randn(2, in_channels, *size)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, num_classes, *size)
    assert out.std() > 0


@pytest.mark.parametrize("name", NAMES)
def test_odd_sizes_are_zero_padded_at_bottom_right_and_cropped_back(name):
    """45x61 runs as 64x64 (FCN, SegNet: multiples of 32) or 48x64 (U-Net: 16), the extra
    rows and columns being zeros: the same numbers as padding by hand and cropping."""
    model = small_model(name, 2)
    multiple = model.size_multiple
    assert multiple == (16 if name == "unet" else 32)
    x = torch.randn(1, 3, 45, 61)
    pad_h, pad_w = -45 % multiple, -61 % multiple
    with torch.no_grad():
        by_hand = model(F.pad(x, (0, pad_w, 0, pad_h)))[..., :45, :61]
        torch.testing.assert_close(model(x), by_hand)
        # ... and not the same as padding on the other sides (the crop is top-left).
        other = model(F.pad(x, (pad_w, 0, pad_h, 0)))[..., pad_h:, pad_w:]
        assert not torch.allclose(model(x), other)


@pytest.mark.parametrize("name", NAMES)
def test_wrong_channels_or_rank_is_an_error_naming_the_model(name):
    model = small_model(name, 2, in_channels=3)
    with pytest.raises(SegmentationInputError, match=rf"'{name}' was built for 3 input"):
        model(torch.randn(1, 4, 64, 64))
    with pytest.raises(SegmentationInputError, match=rf"'{name}' expects a 4-D tensor"):
        model(torch.randn(3, 64, 64))


@pytest.mark.parametrize("name,minimum", [("segnet", 32), ("unet", 16)])
def test_too_small_an_image_is_an_error_naming_the_model(name, minimum):
    model = small_model(name, 2)
    assert model.min_input_size == (minimum, minimum)
    with torch.no_grad():
        assert model(torch.randn(1, 3, minimum, minimum + 5)).shape[-2:] == (minimum,
                                                                           minimum + 5)
    with pytest.raises(SegmentationInputError) as err:
        model(torch.randn(1, 3, minimum - 1, 40))
    msg = str(err.value)
    assert f"'{name}'" in msg and f"{minimum}x{minimum}" in msg and f"{minimum - 1}x40" in msg


def test_fcn_takes_any_size_thanks_to_its_margin():
    model = small_model("fcn8s", 2)
    assert model.min_input_size == (1, 1)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 1, 5)).shape == (1, 2, 1, 5)


def test_encoder_errors_name_the_model():
    with pytest.raises(ValueError, match="fcn8s is built on a VGG trunk.*'resnet18'"):
        build_segmentation_model("fcn8s", 2, encoder="resnet18")
    with pytest.raises(ValueError, match="segnet is built on a VGG trunk"):
        build_segmentation_model("segnet", 2, encoder="resnet18")
    with pytest.raises(ValueError, match="unet: encoder 'tiny_vgg' takes 1 input channels but "
                                         "in_channels=3"):
        build_segmentation_model("unet", 2, encoder=tiny_vgg(1))
    with pytest.raises(ValueError, match="unet: base_channels sets the original"):
        build_segmentation_model("unet", 2, encoder="resnet18", base_channels=8)
    with pytest.raises(TypeError, match="unet: encoder must be"):
        build_segmentation_model("unet", 2, encoder=nn.Conv2d(3, 3, 1))


# --------------------------------------------------------------------------------------------
# Parameter counts (meta device: nothing is allocated)
# --------------------------------------------------------------------------------------------

def meta(name: str, num_classes: int, **kw) -> nn.Module:
    with torch.device("meta"):
        return build_segmentation_model(name, num_classes, **kw)


def test_fcn_parameter_counts():
    """FCN-8s at 21 classes is wkentaro/pytorch-fcn's 134,489,759; all three, layer by layer."""
    k = 21
    trunk = 14_714_688  # VGG-16's 13 convs
    fc6, fc7 = 512 * 7 * 7 * 4096 + 4096, 4096 * 4096 + 4096

    def score(c):
        return c * k + k

    def up(factor):  # bias-free, kernel 2 * factor
        return k * k * (2 * factor) ** 2

    expected = {
        "fcn32s": trunk + fc6 + fc7 + score(4096) + up(32),
        "fcn16s": trunk + fc6 + fc7 + score(4096) + score(512) + up(2) + up(16),
        "fcn8s": trunk + fc6 + fc7 + score(4096) + score(512) + score(256) + 2 * up(2) + up(8),
    }
    assert expected["fcn8s"] == 134_489_759
    for name, count in expected.items():
        assert n_params(meta(name, k)) == count, name


def test_segnet_parameter_counts():
    """11 classes: 29,449,355 in the authors' layout (logits straight from the last conv);
    ptsemseg's 29,449,377 adds a batch norm on the 11 logits (2 x 11 parameters)."""
    assert n_params(meta("segnet", 11)) == 29_449_355
    assert n_params(meta("segnet", 11, final_batch_norm=True)) == 29_449_377


def test_unet_parameter_counts():
    """Original widths, 1 -> 2: 31,030,658 (padding changes no count); with batch norm and
    bias-free convs, 3 -> 2: milesial/Pytorch-UNet's 31,037,698."""
    assert n_params(meta("unet", 2, in_channels=1)) == 31_030_658
    assert n_params(meta("unet", 2, in_channels=3, batch_norm=True)) == 31_037_698


# --------------------------------------------------------------------------------------------
# FCN
# --------------------------------------------------------------------------------------------

def impulse_fcn(stride: int) -> FCN:
    """An FCN whose every conv passes its input through (a centre tap of 1; fc6 a 7x7 box of
    ones): the response to one bright pixel is a symmetric blob around the pooling cell that
    holds it, located by the crop offsets alone."""
    encoder = VGGBackbone([1, "M", 1, "M", 1, "M", 1, "M", 1, "M"], in_channels=1)
    model = FCN(encoder, 1, stride, fc_channels=1).eval()
    with torch.no_grad():
        for conv in (m for m in model.modules() if type(m) is nn.Conv2d):
            conv.weight.zero_()
            conv.bias.zero_()
            conv.weight[..., conv.kernel_size[0] // 2, conv.kernel_size[1] // 2] = 1
        model.fc6.weight.fill_(1)
    return model


@pytest.mark.parametrize("stride", [32, 16, 8])
def test_fcn_crop_offsets_centre_the_output_on_the_input(stride):
    """Averaged over 32 consecutive positions of a single bright pixel (each place in a
    pooling cell once), the output's centre of mass is the pixel: an offset off by one pixel
    would move it by one."""
    model = impulse_fcn(stride)
    size = 384
    coords = torch.arange(size, dtype=torch.float64)
    errors = []
    for p in range(170, 202):
        x = torch.zeros(1, 1, size, size)
        x[..., p, p] = 1
        with torch.no_grad():
            y = model(x)[0, 0].double()
        assert y.min() >= 0 and y[0].sum() == 0 and y[-1].sum() == 0  # the blob is inside
        total = y.sum()
        errors.append(((y.sum(1) * coords).sum() / total - p,
                       (y.sum(0) * coords).sum() / total - p))
    mean = torch.tensor(errors).mean(0)
    assert mean.abs().max() < 1e-6, mean


def test_fcn_layout_initialisation_and_frozen_final_upsampling():
    fresh = build_segmentation_model("fcn8s", 3, encoder=tiny_vgg(), fc_channels=16)
    assert fresh.fc6.kernel_size == (7, 7) and fresh.fc7.kernel_size == (1, 1)
    for m in (fresh.score_fr, fresh.score_pool4, fresh.score_pool3):
        assert m.weight.abs().sum() == 0 and m.bias.abs().sum() == 0  # the paper's zero init
    with torch.no_grad():
        assert fresh(torch.randn(1, 3, 40, 40)).abs().max() == 0
    ups = [fresh.upscore2, fresh.upscore_pool4, fresh.upscore8]
    assert all(u.bias is None for u in ups)
    assert [u.weight.requires_grad for u in ups] == [True, True, False]
    drop = [m for m in fresh.modules() if isinstance(m, nn.Dropout)]
    assert [d.p for d in drop] == [0.5, 0.5]


@pytest.mark.parametrize("name,layer,factor", [
    ("fcn8s", "upscore2", 2), ("fcn8s", "upscore_pool4", 2), ("fcn8s", "upscore8", 8),
    ("fcn16s", "upscore16", 16), ("fcn32s", "upscore", 32)])
def test_fcn_upsampling_starts_as_bilinear_interpolation(name, layer, factor):
    """The transposed conv on a random 3-class map equals bilinear interpolation (computed by
    ``F.interpolate``, half-pixel centres) shifted by factor / 2, away from the borders, and
    never mixes classes."""
    deconv = getattr(build_segmentation_model(name, 3, encoder=tiny_vgg(), fc_channels=8), layer)
    n, f = 6, factor
    x = torch.randn(2, 3, n, n + 1)
    with torch.no_grad():
        y = deconv(x)
    ref = F.interpolate(x, scale_factor=f, mode="bilinear", align_corners=False)
    lo, hi = f // 2, n * f - f // 2  # where interpolate does not clamp at the border
    torch.testing.assert_close(y[..., lo + f // 2:hi + f // 2, lo + f // 2:hi + f // 2],
                               ref[..., lo:hi, lo:hi])
    torch.testing.assert_close(deconv.weight, bilinear_upsampling(3, f).weight)


def test_vgg16_classifier_loads_into_fcn8s_reshaped():
    """Key mapping and shapes at full size (meta): features -> encoder, classifier.0/3 ->
    fc6 (4096, 512, 7, 7) / fc7 (4096, 4096, 1, 1); the 1000-class layer is left out."""
    with torch.device("meta"):
        fcn = build_segmentation_model("fcn8s", 21)
        state = create_model("vgg16").state_dict()
    report = load_vgg16_classifier(fcn, state)
    assert fcn.fc6.weight.shape == (4096, 512, 7, 7)
    assert fcn.fc7.weight.shape == (4096, 4096, 1, 1)
    assert report.unexpected == ["classifier.6.weight", "classifier.6.bias"]
    assert all(k.startswith(("score", "upscore")) for k in report.missing)
    assert len(report.missing) == 9


@pytest.fixture(scope="module")
def tiny_vgg_classifier():
    torch.manual_seed(1)
    return VGG(TINY, num_classes=5).eval()  # features 4..8 wide, classifier 392-4096-4096-5


def test_vgg_classifier_weights_compute_the_same_in_fcn(tiny_vgg_classifier, tmp_path):
    """After loading (here from a file wrapped as {"state_dict": ...}), fc6 at one position
    is the classifier's first linear layer on the flattened 7x7 pool5 patch, fc7 its second,
    and the trunk is the classifier's ``features``."""
    vgg = tiny_vgg_classifier
    path = tmp_path / "vgg.pth"
    torch.save({"state_dict": vgg.state_dict()}, path)
    fcn = build_segmentation_model("fcn8s", 3, encoder=tiny_vgg()).eval()
    load_vgg16_classifier(fcn, path)
    for k, v in vgg.features.state_dict().items():
        torch.testing.assert_close(fcn.encoder.features.state_dict()[k], v)
    pool5 = torch.randn(1, 8, 9, 10)
    with torch.no_grad():
        conv = fcn.fc6(pool5)
        for i, j in [(0, 0), (2, 3), (1, 2)]:
            patch = pool5[:, :, i:i + 7, j:j + 7].flatten(1)
            torch.testing.assert_close(conv[:, :, i, j], vgg.classifier[0](patch))
        hidden = torch.randn(4, 4096)
        torch.testing.assert_close(fcn.fc7(hidden[:, :, None, None])[:, :, 0, 0],
                                   vgg.classifier[3](hidden))
        # On a 224x224 image pool5 is 7x7: fc6 + ReLU is the classifier's first layer + ReLU.
        x = torch.randn(1, 3, 224, 224)
        feats = fcn.encoder.forward_features(x)
        torch.testing.assert_close(fcn.relu6(fcn.fc6(feats)).flatten(1),
                                   vgg.classifier[:2](torch.flatten(vgg.avgpool(feats), 1)))


def test_vgg_classifier_that_does_not_fit_is_a_clear_error(tiny_vgg_classifier):
    state = tiny_vgg_classifier.state_dict()
    fcn = build_segmentation_model("fcn8s", 3, encoder=tiny_vgg(), fc_channels=16)
    with pytest.raises(WeightsError, match=r"fc6.weight: model \[16, 8, 7, 7\] vs file "
                                           r"\[4096, 392\]"):
        load_vgg16_classifier(fcn, state)
    fcn = build_segmentation_model("fcn8s", 3, encoder=tiny_vgg())
    no_fc7 = {k: v for k, v in state.items() if not k.startswith("classifier.3")}
    with pytest.raises(WeightsError, match="missing.*fc7.weight"):
        load_vgg16_classifier(fcn, no_fc7)


# --------------------------------------------------------------------------------------------
# SegNet
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def segnet():
    torch.manual_seed(0)
    return build_segmentation_model("segnet", 11).eval()


def test_segnet_encoder_is_the_registry_vgg16_bn_and_the_decoder_mirrors_it(segnet):
    assert type(segnet.encoder) is VGGBackbone and segnet.encoder.name == "vgg16_bn"
    with torch.device("meta"):
        vgg16_bn = create_model("vgg16_bn").state_dict()  # torchvision's layout
    report = compare_state_dicts(segnet.encoder, vgg16_bn)
    assert not report.missing and not report.mismatched
    assert all(k.startswith("classifier.") for k in report.unexpected)
    convs = [(m.in_channels, m.out_channels) for m in segnet.decoder.modules()
             if isinstance(m, nn.Conv2d)]
    assert convs == [(512, 512)] * 5 + [(512, 256), (256, 256), (256, 256), (256, 128),
                                        (128, 128), (128, 64), (64, 64), (64, 11)]
    assert isinstance(segnet.unpool, nn.MaxUnpool2d)
    with torch.no_grad():
        assert segnet(torch.randn(1, 3, 45, 61)).shape == (1, 11, 45, 61)


def test_segnet_first_unpooling_puts_each_maximum_back_where_it_was(segnet):
    """By hand: in every 2x2 window of the map the encoder's last pool read, the maximum stays
    at its place and the three others become 0; that is the decoder's first unpooling."""
    x = torch.randn(1, 3, 64, 64)
    features = segnet.encoder.features
    last_pool = max(i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d))
    unpooled = []
    hook = segnet.unpool.register_forward_hook(lambda m, i, out: unpooled.append(out))
    try:
        with torch.no_grad():
            segnet(x)
            before = features[:last_pool](x)[0]  # (512, 4, 4)
    finally:
        hook.remove()
    expected = torch.zeros_like(before)
    for c in range(before.shape[0]):
        for i in (0, 2):
            for j in (0, 2):
                window = before[c, i:i + 2, j:j + 2]
                r, s = divmod(int(window.argmax()), 2)
                expected[c, i + r, j + s] = window[r, s]
    assert len(unpooled) == 5
    torch.testing.assert_close(unpooled[0][0], expected)


def test_segnet_output_depends_on_the_pooling_indices(segnet):
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        stages, indices = segnet.encoder.forward_stages(x, return_indices=True)
        sizes = [x.shape[-2:]] + [s.shape[-2:] for s in stages[:-1]]
        out = segnet.decode(stages[-1], indices, sizes)
        torch.testing.assert_close(out, segnet(x))
        # Move every maximum of the second pool to its window's top-left corner.
        width = sizes[1][-1]
        where = indices[1]
        top_left = (where // width) // 2 * 2 * width + (where % width) // 2 * 2
        assert not torch.equal(top_left, where)
        moved = segnet.decode(stages[-1], [indices[0], top_left, *indices[2:]], sizes)
    assert not torch.allclose(out, moved)


# --------------------------------------------------------------------------------------------
# U-Net
# --------------------------------------------------------------------------------------------

def test_original_unet_layout_and_full_size_forward():
    torch.manual_seed(0)
    model = build_segmentation_model("unet", 2, in_channels=1).eval()
    assert [(f.channels, f.reduction) for f in model.encoder.feature_info] == [
        (64, 1), (128, 2), (256, 4), (512, 8), (1024, 16)]
    ups = [(b.up.in_channels, b.up.out_channels, b.up.kernel_size, b.up.stride)
           for b in model.decoder]
    assert ups == [(c, c // 2, (2, 2), (2, 2)) for c in (1024, 512, 256, 128)]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs[:-1])
    assert convs[-1].kernel_size == (1, 1) and convs[-1].out_channels == 2
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        assert model(torch.randn(1, 1, 21, 30)).shape == (1, 2, 21, 30)


def test_unet_base_channels_and_batch_norm():
    model = build_segmentation_model("unet", 3, base_channels=8, batch_norm=True)
    assert [f.channels for f in model.encoder.feature_info] == [8, 16, 32, 64, 128]
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(m.bias is None for m in model.modules()
               if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))


def test_unet_on_resnet18_follows_segmentation_models_pytorch():
    """Steps /32 -> /16 (+layer3) -> /8 (+layer2) -> /4 (+layer1) -> /2 (+stem) -> /1 (no
    skip), nearest upsampling, widths 256-128-64-32-16."""
    torch.manual_seed(0)
    model = build_segmentation_model("unet", 5, in_channels=4, encoder="resnet18").eval()
    assert model.encoder.name == "resnet18" and model.size_multiple == 32
    assert model.levels == [(16, 3), (8, 2), (4, 1), (2, 0), (1, None)]
    first_convs = [b.convs[0] for b in model.decoder]
    assert [(c.in_channels, c.out_channels) for c in first_convs] == [
        (512 + 256, 256), (256 + 128, 128), (128 + 64, 64), (64 + 64, 32), (32, 16)]
    with torch.no_grad():
        assert model(torch.randn(2, 4, 45, 61)).shape == (2, 5, 45, 61)
        assert model(torch.randn(1, 4, 3, 7)).shape == (1, 5, 3, 7)  # ResNet takes any size


class PluginBackbone(Backbone):
    """A user's backbone: stages at /1, /4 (a stride-4 conv) and /8; at least 20x20."""

    def __init__(self, in_channels: int = 3):
        super().__init__()
        self.in_channels = in_channels
        self.stages = nn.ModuleList([
            nn.Conv2d(in_channels, 5, 3, padding=1),
            nn.Conv2d(5, 6, 4, stride=4),
            nn.Conv2d(6, 7, 2, stride=2),
        ])
        self.feature_info = [FeatureInfo("full", 5, 1), FeatureInfo("quarter", 6, 4),
                             FeatureInfo("eighth", 7, 8)]
        self.min_input_size = (20, 20)


@pytest.fixture
def plugin():
    register_backbone("segtest_plugin")(PluginBackbone)
    yield "segtest_plugin"
    BACKBONES.unregister("segtest_plugin")


def test_unet_on_a_plugin_backbone_with_a_full_resolution_stage(plugin):
    torch.manual_seed(0)
    model = build_segmentation_model("unet", 3, in_channels=2, encoder=plugin).eval()
    assert model.levels == [(4, 1), (1, 0)]  # a 2x then a 4x step, skips /4 and /1
    assert [(c.in_channels, c.out_channels) for c in (b.convs[0] for b in model.decoder)] == [
        (7 + 6, 256), (256 + 5, 128)]
    with torch.no_grad():
        assert model(torch.randn(2, 2, 29, 43)).shape == (2, 3, 29, 43)
    with pytest.raises(SegmentationInputError, match=re.escape("'unet' needs images of at "
                                                               "least 20x20")):
        model(torch.randn(1, 2, 19, 43))
    with pytest.raises(ValueError, match="needs 2 decoder widths"):
        build_segmentation_model("unet", 3, encoder=plugin, decoder_channels=(8, 8, 8))


def test_unet_transposed_upsampling_on_an_encoder():
    model = build_segmentation_model("unet", 2, encoder=create_backbone("resnet18"),
                                     upsample="transpose", decoder_channels=(32, 16, 8, 8, 8))
    assert isinstance(model.decoder[0].up, nn.ConvTranspose2d)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 45, 61)).shape == (1, 2, 45, 61)


@pytest.mark.parametrize("encoder", [None, "resnet18"])
def test_unet_decoder_reads_every_skip(encoder):
    """Replacing any one encoder stage by noise changes the logits: each skip is used."""
    torch.manual_seed(0)
    kw = {"base_channels": 4} if encoder is None else {"decoder_channels": (8, 8, 8, 8, 8)}
    model = build_segmentation_model("unet", 2, encoder=encoder, **kw).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        stages = model.encoder.forward_stages(x)
        out = model(x)
        for k in range(len(stages)):
            changed = list(stages)
            changed[k] = torch.randn_like(stages[k])
            model.encoder.forward_stages = lambda _, s=changed: s
            try:
                assert not torch.allclose(model(x), out), k
            finally:
                del model.encoder.forward_stages


@pytest.mark.parametrize("encoder", [None, "resnet18"])
def test_unet_forward_is_its_blocks_forward_chained(encoder):
    """UNet.forward_padded writes UNetUp.forward's steps out (so that inference frees each
    skip once concatenated): the same numbers as calling the blocks one after another."""
    torch.manual_seed(0)
    kw = {"base_channels": 4} if encoder is None else {"decoder_channels": (8, 8, 8, 8, 8)}
    model = build_segmentation_model("unet", 3, encoder=encoder, **kw).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        stages = model.encoder.forward_stages(x)
        h = stages[-1]
        for block, (r, skip) in zip(model.decoder, model.levels):
            h = block(h, stages[skip] if skip is not None else None,
                      stages[skip].shape[-2:] if skip is not None else (64 // r, 64 // r))
        torch.testing.assert_close(model(x), model.head(h), rtol=0, atol=0)
