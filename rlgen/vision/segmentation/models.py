"""Semantic segmentation networks: FCN-32s / 16s / 8s, SegNet and U-Net, built by name.

- FCN: Long, Shelhamer, Darrell, "Fully Convolutional Networks for Semantic Segmentation"
  (CVPR 2015). VGG-16 with its fully connected layers turned into convolutions, class scores
  upsampled by bilinear-initialised transposed convolutions, and (16s / 8s) fused with scores
  from pool4 / pool3.
- SegNet: Badrinarayanan, Kendall, Cipolla, "SegNet: A Deep Convolutional Encoder-Decoder
  Architecture for Image Segmentation" (TPAMI 2017). A VGG-16-BN encoder whose max-pools keep
  their argmax positions, and a mirrored decoder that max-unpools to those positions.
- U-Net: Ronneberger, Fischer, Brox, "U-Net: Convolutional Networks for Biomedical Image
  Segmentation" (MICCAI 2015); with ``encoder=`` any registered backbone, the U-Net decoder
  segmentation_models_pytorch popularised (``Unet(encoder_name=...)``).

Every model maps ``(N, C, H, W)`` to logits ``(N, num_classes, H, W)``. ``H`` and ``W`` need
not be multiples of the network's reduction: the input is padded with zeros at the bottom and
right up to the next multiple (``size_multiple``: 32 for FCN and SegNet, 16 for the original
U-Net, the encoder's total reduction otherwise), and the logits are cropped back to ``H x W``.
Zeros are what the networks' own convolutions pad with (and, on a mean-subtracted image, the
mean colour); reflection would fail on images smaller than the padding. Padding rounds sizes up
only: an image smaller than the encoder's ``min_input_size`` is refused with a
``SegmentationInputError`` naming the model (SegNet and VGG encoders: 32x32, the original
U-Net: 16x16; FCN, with its 100-pixel margin, and ResNet encoders take any size).

Build with ``build_segmentation_model(name, num_classes, in_channels=3, encoder=None, **kw)``
(``SEGMENTATION_MODELS`` holds ``fcn32s``, ``fcn16s``, ``fcn8s``, ``segnet``, ``unet``; plugins
may add more). ``encoder`` is a registered backbone's name or a built backbone; every model
keeps it as ``model.encoder``. Parameter counts (``sum(p.numel())``, checked on the meta
device in the tests): FCN-8s 134,489,759 at 21 classes (wkentaro/pytorch-fcn's layout);
SegNet 29,449,355 at 11 classes (the authors' Caffe layout; 29,449,377, ptsemseg's, with
``final_batch_norm=True``); U-Net 31,030,658 from 1 channel to 2 classes (the paper's widths;
padding changes no count), 31,037,698 for ``in_channels=3, batch_norm=True`` (milesial's).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rlgen.registry import SEGMENTATION_MODELS
from rlgen.vision.backbones import Backbone, BackboneInputError, FeatureInfo, create_backbone
from rlgen.vision.backbones.vgg import VGGBackbone
from rlgen.vision.backbones.weights import LoadReport, WeightsError, read_state_dict


class SegmentationInputError(BackboneInputError):
    """An input a segmentation model cannot take: wrong rank, channel count, or too small."""


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """``x`` with zero rows at the bottom and zero columns at the right up to sizes that are
    multiples of ``multiple`` (``x`` itself when they already are)."""
    pad_h, pad_w = -x.shape[-2] % multiple, -x.shape[-1] % multiple
    return F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x


def _init_conv(m: nn.Conv2d | nn.ConvTranspose2d) -> None:
    """He initialisation (the U-Net paper's, section 3), zero bias."""
    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
    if m.bias is not None:
        nn.init.zeros_(m.bias)


class SegmentationModel(nn.Module):
    """Base class: input checks, the pad-to-a-multiple / crop-back rule, and the attributes
    every model has (``name``, ``encoder``, ``in_channels``, ``num_classes``,
    ``min_input_size``, ``size_multiple``). Subclasses implement ``forward_padded``, which only
    ever sees inputs whose sizes are multiples of ``size_multiple``."""

    name: str = "segmentation model"
    encoder: nn.Module
    in_channels: int
    num_classes: int
    #: smallest (H, W) accepted before padding (the encoder's own minimum)
    min_input_size: tuple[int, int] = (1, 1)
    #: inputs are zero-padded at the bottom / right to multiples of this
    size_multiple: int = 1

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``SegmentationInputError`` naming the model, the expected and the given shape."""
        min_h, min_w = self.min_input_size
        expected = f"(N, {self.in_channels}, H>={min_h}, W>={min_w})"
        if x.dim() != 4:
            raise SegmentationInputError(
                f"segmentation model {self.name!r} expects a 4-D tensor {expected}, "
                f"got {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise SegmentationInputError(
                f"segmentation model {self.name!r} was built for {self.in_channels} input "
                f"channels {expected}, got {x.shape[1]} channels in {tuple(x.shape)}")
        if x.shape[2] < min_h or x.shape[3] < min_w:
            raise SegmentationInputError(
                f"segmentation model {self.name!r} needs images of at least {min_h}x{min_w} "
                f"{expected} (its encoder's minimum), got {x.shape[2]}x{x.shape[3]} in "
                f"{tuple(x.shape)}")

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        height, width = x.shape[-2:]
        logits = self.forward_padded(pad_to_multiple(x, self.size_multiple))
        return logits[..., :height, :width]


def _encoder_name(encoder: nn.Module) -> str:
    return getattr(encoder, "name", type(encoder).__name__)


def resolve_encoder(model: str, encoder: str | nn.Module | None, in_channels: int,
                    default: str | None = None) -> nn.Module:
    """The backbone a model is built on: the registered backbone ``encoder`` (or ``default``
    when ``encoder`` is None) built for ``in_channels``; or ``encoder`` itself when it is
    already built (it must take ``in_channels`` and follow the backbone contract)."""
    if in_channels < 1:
        raise ValueError(f"{model}: in_channels must be >= 1, got {in_channels}")
    if encoder is None and default is None:
        raise ValueError(f"{model}: an encoder is needed (a backbone's name or a built one)")
    if encoder is None or isinstance(encoder, str):
        return create_backbone(encoder or default, in_channels=in_channels)
    if not (isinstance(encoder, nn.Module) and hasattr(encoder, "feature_info")
            and hasattr(encoder, "forward_stages")):
        raise TypeError(
            f"{model}: encoder must be a registered backbone's name or a built backbone "
            f"(an nn.Module with feature_info and forward_stages), got {type(encoder).__name__}")
    if encoder.in_channels != in_channels:
        raise ValueError(
            f"{model}: encoder {_encoder_name(encoder)!r} takes {encoder.in_channels} input "
            f"channels but in_channels={in_channels}; pass in_channels={encoder.in_channels} "
            f"or build the encoder for {in_channels}")
    return encoder


def _stage_at(model: str, encoder: nn.Module, reduction: int) -> int:
    """Index of the (last) encoder stage with this reduction; a clear error if none has it."""
    found = [i for i, f in enumerate(encoder.feature_info) if f.reduction == reduction]
    if not found:
        have = [f.reduction for f in encoder.feature_info]
        raise ValueError(f"{model}: encoder {_encoder_name(encoder)!r} has no stage at "
                         f"reduction {reduction} (its stages: {have})")
    return found[-1]


def _require_vgg(model: str, encoder: nn.Module) -> VGGBackbone:
    # FCN's crop offsets and SegNet's mirrored decoder follow VGG's geometry (3x3 same convs,
    # five unpadded 2x2 pools); other trunks need other offsets: they go to the U-Net decoder.
    if not isinstance(encoder, VGGBackbone) or len(encoder.feature_info) != 5:
        raise ValueError(
            f"{model} is built on a VGG trunk (vgg11 ... vgg19, with or without _bn), got "
            f"encoder {_encoder_name(encoder)!r}; for other encoders use 'unet'")
    return encoder


# --------------------------------------------------------------------------------------------
# FCN
# --------------------------------------------------------------------------------------------

def bilinear_kernel(kernel_size: int, device=None) -> torch.Tensor:
    """The ``(k, k)`` kernel with which a stride-``(k + 1) // 2`` transposed convolution
    performs bilinear interpolation (the FCN reference's ``upsample_filt``)."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    t = torch.arange(kernel_size, dtype=torch.float32, device=device)
    line = 1 - (t - center).abs() / factor
    return line[:, None] * line[None, :]


def bilinear_upsampling(channels: int, factor: int) -> nn.ConvTranspose2d:
    """A bias-free transposed conv (kernel ``2 * factor``, stride ``factor``) that upsamples
    each channel on its own by bilinear interpolation. Output ``o`` reads the input at
    ``(o - factor + 0.5) / factor``: it equals ``F.interpolate(scale_factor=factor,
    mode="bilinear")`` at ``o - factor // 2`` away from the borders."""
    up = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, bias=False)
    with torch.no_grad():
        kernel = bilinear_kernel(2 * factor, device=up.weight.device)
        eye = torch.eye(channels, device=up.weight.device)
        up.weight.copy_(eye[:, :, None, None] * kernel)  # no mixing between classes
    return up


def _crop(x: torch.Tensor, offset: int, height: int, width: int) -> torch.Tensor:
    return x[..., offset:offset + height, offset:offset + width]


class FCN(SegmentationModel):
    """FCN-32s, -16s or -8s (``stride``) on a VGG trunk, in wkentaro/pytorch-fcn's layout and
    parameter names (``fc6``, ``score_fr``, ``upscore2``, ``score_pool4`` ...).

    The trunk's first conv sees the image with a 100-pixel zero margin (the reference's
    ``conv1_1`` padding 100, so that fc6's 7x7 window fits any image): the input gets 99 zero
    pixels on every side and the trunk's own ``conv1_1`` (padding 1) adds the last one, which is
    the same arithmetic and keeps the registry's trunk unchanged. Crop offsets, as in the
    reference: a layer whose output ``j`` is centred on input pixel ``a * j + b`` (conv1_1:
    ``j - 99``; each 2x2 pool doubles ``a`` and adds ``a / 2`` to ``b``; fc6 shifts by 3
    pool5 pixels; a transposed conv of stride ``s`` and kernel ``2s`` sends ``j`` to
    ``s * j + s - 0.5``) makes score_fr ``32 j + 12.5``, so the 32x output ``o`` lies on pixel
    ``o - 19`` (crop 19); in 16s, pool4 (``16 j - 91.5``) meets the 2x scores (``16 o - 11.5``)
    at ``j = o + 5``, and the 16x output crops 27; in 8s, pool3 crops 9 and the 8x output 31.

    The trunk's pools round down (torchvision's VGG), Caffe's round up: inputs are padded to a
    multiple of 32 so that every crop lies inside its map; for such sizes the reference keeps
    one more pooled row/column of margin at the bottom/right, which can change the scores of the
    last rows/columns slightly, never the parameters or the alignment.

    The score layers start at zero (the paper's choice: training starts from "no opinion" with
    the trunk undisturbed); fc6/fc7 start from He init and are meant to be replaced by VGG-16's
    classifier (``load_vgg16_classifier``). The final upsampling is fixed bilinear interpolation
    (``requires_grad=False``, as in the paper), the 2x ones are learned from a bilinear start.
    """

    # where the reference crops each map (derivation above)
    POOL4_CROP = 5
    POOL3_CROP = 9
    FINAL_CROP = {32: 19, 16: 27, 8: 31}

    def __init__(self, encoder: VGGBackbone, num_classes: int, stride: int = 8,
                 fc_channels: int = 4096, dropout: float = 0.5,
                 learn_final_upsampling: bool = False):
        super().__init__()
        if stride not in (32, 16, 8):
            raise ValueError(f"FCN stride must be 32, 16 or 8, got {stride}")
        self.name = f"fcn{stride}s"
        _require_vgg(self.name, encoder)
        if num_classes < 1:
            raise ValueError(f"{self.name}: num_classes must be >= 1, got {num_classes}")
        self.encoder = encoder
        self.in_channels = encoder.in_channels
        self.num_classes = num_classes
        self.stride = stride
        self.size_multiple = 32
        self.min_input_size = (1, 1)  # the 100-pixel margin lets any image through
        self._pool = {r: _stage_at(self.name, encoder, r) for r in (8, 16, 32)}
        pool5_channels = encoder.feature_info[self._pool[32]].channels

        # fc6 / fc7: VGG's first two fully connected layers as a 7x7 and a 1x1 convolution.
        self.fc6 = nn.Conv2d(pool5_channels, fc_channels, 7)
        self.relu6 = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout(dropout)
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, 1)
        self.relu7 = nn.ReLU(inplace=True)
        self.drop7 = nn.Dropout(dropout)
        self.score_fr = nn.Conv2d(fc_channels, num_classes, 1)
        scores = [self.score_fr]
        if stride == 32:
            self.upscore = bilinear_upsampling(num_classes, 32)
            final = self.upscore
        else:
            self.score_pool4 = self._score(self._pool[16])
            self.upscore2 = bilinear_upsampling(num_classes, 2)
            scores.append(self.score_pool4)
            if stride == 16:
                self.upscore16 = bilinear_upsampling(num_classes, 16)
                final = self.upscore16
            else:
                self.score_pool3 = self._score(self._pool[8])
                self.upscore_pool4 = bilinear_upsampling(num_classes, 2)
                self.upscore8 = bilinear_upsampling(num_classes, 8)
                scores.append(self.score_pool3)
                final = self.upscore8
        for m in (self.fc6, self.fc7):
            _init_conv(m)
        for m in scores:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
        final.weight.requires_grad_(learn_final_upsampling)

    def _score(self, stage: int) -> nn.Conv2d:
        return nn.Conv2d(self.encoder.feature_info[stage].channels, self.num_classes, 1)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        stages = self.encoder.forward_stages(F.pad(x, (99, 99, 99, 99)))
        # keep only pool3 / pool4 / pool5: pool1 and pool2 (the largest maps, of the image and
        # its 99-pixel margins) are freed now rather than held to the end (inference memory)
        pool3, pool4, pool5 = (stages[self._pool[r]] for r in (8, 16, 32))
        del stages
        h = self.drop6(self.relu6(self.fc6(pool5)))
        h = self.score_fr(self.drop7(self.relu7(self.fc7(h))))
        if self.stride == 32:
            return _crop(self.upscore(h), self.FINAL_CROP[32], height, width)
        h = self.upscore2(h)
        h = h + _crop(self.score_pool4(pool4), self.POOL4_CROP, *h.shape[-2:])
        if self.stride == 16:
            return _crop(self.upscore16(h), self.FINAL_CROP[16], height, width)
        h = self.upscore_pool4(h)
        h = h + _crop(self.score_pool3(pool3), self.POOL3_CROP, *h.shape[-2:])
        return _crop(self.upscore8(h), self.FINAL_CROP[8], height, width)


def load_vgg16_classifier(fcn: FCN, state_dict_or_path: str | os.PathLike | Mapping
                          ) -> LoadReport:
    """Initialise an FCN from a VGG classifier checkpoint (torchvision's key names, which
    ``create_model("vgg16")`` shares; a path, a mapping, an rlgen run checkpoint or
    ``"torchvision:vgg16"``): ``features.*`` into the trunk, ``classifier.0`` into fc6 and
    ``classifier.3`` into fc7, their weights reshaped into convolutions ((4096, 25088) ->
    (4096, 512, 7, 7), which is how the classifier flattens pool5: channel, row, column;
    (4096, 4096) -> (4096, 4096, 1, 1)). The 1000-class ``classifier.6`` is left out, as in the
    paper. Returns a ``LoadReport``: ``missing`` lists the FCN's freshly initialised tensors
    (score and upsampling layers), ``unexpected`` the file's unused keys. A trunk or fc layer
    that is absent or does not fit is a ``WeightsError`` naming the keys."""
    state = read_state_dict(state_dict_or_path)
    own = fcn.state_dict()
    renamed = {f"encoder.{k}": v for k, v in state.items() if k.startswith("features.")}
    for src, dst in (("classifier.0", "fc6"), ("classifier.3", "fc7")):
        for kind in ("weight", "bias"):
            if f"{src}.{kind}" in state:
                renamed[f"{dst}.{kind}"] = state[f"{src}.{kind}"]
    required = [k for k in own if k.startswith(("encoder.", "fc6.", "fc7."))]
    missing = [k for k in required if k not in renamed]
    mismatched = []
    for key in required:
        if key in renamed:
            value, target = renamed[key], own[key].shape
            if value.numel() != own[key].numel():
                mismatched.append(f"{key}: model {list(target)} vs file {list(value.shape)}")
            else:
                renamed[key] = value.reshape(target)
    if missing or mismatched:
        lines = [f"VGG classifier weights do not fit {fcn.name!r}:"]
        if missing:
            lines.append(f"  missing (features.* -> encoder.*, classifier.0/3 -> fc6/fc7): "
                         f"{missing[:8]}")
        lines += [f"  {m}" for m in mismatched[:8]]
        raise WeightsError("\n".join(lines))
    fcn.load_state_dict({k: renamed[k] for k in required}, strict=False)
    used = {k for k in state if k.startswith(("features.", "classifier.0.", "classifier.3."))}
    return LoadReport(missing=[k for k in own if k not in required],
                      unexpected=[k for k in state if k not in used])


# --------------------------------------------------------------------------------------------
# SegNet
# --------------------------------------------------------------------------------------------

def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """SegNet's decoder unit: 3x3 conv (with bias, as in the authors' model) + BN + ReLU."""
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
    _init_conv(conv)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def vgg_blocks(encoder: VGGBackbone) -> list[list[tuple[int, int]]]:
    """``(in_channels, out_channels)`` of each conv, grouped by pooling block."""
    blocks: list[list[tuple[int, int]]] = [[]]
    for layer in encoder.features:
        if isinstance(layer, nn.Conv2d):
            blocks[-1].append((layer.in_channels, layer.out_channels))
        elif isinstance(layer, nn.MaxPool2d):
            blocks.append([])
    return blocks[:-1]


class SegNet(SegmentationModel):
    """SegNet: a VGG encoder (default the registry's ``vgg16_bn``, so VGG-16-BN weights load
    into ``segnet.encoder`` as they are) and a decoder that mirrors it block by block: max-unpool
    with the indices of the matching encoder pool, then the block's convs in reverse order with
    their widths swapped (for VGG-16: 512-512-512, 512-512-256, 256-256-128, 128-64, 64-K).

    The last conv (64 -> ``num_classes``) outputs the logits directly, as in the authors' Caffe
    model (29,449,355 parameters at 11 classes). ``final_batch_norm=True`` adds ptsemseg's batch
    norm on the logits (29,449,377, its figure; ptsemseg's ReLU on the logits is left out, as it
    would forbid negative scores). Inputs are padded to a multiple of 32 so that every pixel can
    be a pool's maximum and every unpooling restores its map's exact size.
    """

    def __init__(self, encoder: VGGBackbone, num_classes: int, final_batch_norm: bool = False):
        super().__init__()
        self.name = "segnet"
        _require_vgg(self.name, encoder)
        if num_classes < 1:
            raise ValueError(f"segnet: num_classes must be >= 1, got {num_classes}")
        self.encoder = encoder
        self.in_channels = encoder.in_channels
        self.num_classes = num_classes
        self.size_multiple = encoder.reduction
        self.min_input_size = tuple(encoder.min_input_size)
        self.unpool = nn.MaxUnpool2d(2, stride=2)
        decoder = []
        for k, convs in reversed(list(enumerate(vgg_blocks(encoder)))):
            mirrored = [(c_out, c_in) for c_in, c_out in reversed(convs)]
            layers = [conv_bn_relu(c_in, c_out) for c_in, c_out in mirrored]
            if k == 0:  # the classifier replaces the conv back to the image's channels
                layers[-1] = nn.Conv2d(mirrored[-1][0], num_classes, 3, padding=1)
                if final_batch_norm:
                    layers.append(nn.BatchNorm2d(num_classes))
            decoder.append(nn.Sequential(*layers))
        self.decoder = nn.ModuleList(decoder)  # decoder[0] undoes the deepest pool

    def decode(self, features: torch.Tensor, indices: Sequence[torch.Tensor],
               sizes: Sequence[torch.Size]) -> torch.Tensor:
        """The decoder on the deepest ``features``, with the encoder's pool ``indices`` and the
        sizes of the maps those pools read (both in encoder order, shallowest first)."""
        x = features
        for block, where, size in zip(self.decoder, reversed(indices), reversed(sizes)):
            x = block(self.unpool(x, where, output_size=size))
        return x

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        stages, indices = self.encoder.forward_stages(x, return_indices=True)
        # VGG's 3x3 convs keep sizes: pool k read a map as large as stage k - 1 (the input).
        sizes = [x.shape[-2:]] + [s.shape[-2:] for s in stages[:-1]]
        deepest = stages[-1]
        del stages  # the decoder needs only the indices: free the shallower maps now
        return self.decode(deepest, indices, sizes)


# --------------------------------------------------------------------------------------------
# U-Net
# --------------------------------------------------------------------------------------------

class DoubleConv(nn.Sequential):
    """U-Net's unit: two 3x3 convs, each followed by ReLU (and batch norm before it when asked,
    in which case the convs have no bias). Padded, so the size is kept; the paper's unpadded
    convs have the same parameters."""

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool = False):
        layers: list[nn.Module] = []
        for c_in in (in_channels, out_channels):
            conv = nn.Conv2d(c_in, out_channels, 3, padding=1, bias=not batch_norm)
            _init_conv(conv)
            layers.append(conv)
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class UNetEncoder(Backbone):
    """The original contracting path as a backbone: ``level1`` (two convs at full size, /1),
    then ``level2`` ... ``level5``, each a 2x2 max-pool and two convs, doubling the width
    (64, 128, 256, 512, 1024 for ``base_channels=64``)."""

    name = "unet_encoder"

    def __init__(self, in_channels: int = 3, base_channels: int = 64, batch_norm: bool = False):
        super().__init__()
        if in_channels < 1 or base_channels < 1:
            raise ValueError(f"unet: in_channels and base_channels must be >= 1, got "
                             f"{in_channels} and {base_channels}")
        self.in_channels = in_channels
        widths = [base_channels * 2**i for i in range(5)]
        stages = [DoubleConv(in_channels, widths[0], batch_norm)]
        stages += [nn.Sequential(nn.MaxPool2d(2), DoubleConv(c_in, c_out, batch_norm))
                   for c_in, c_out in zip(widths, widths[1:])]
        self.stages = nn.ModuleList(stages)
        self.feature_info = [FeatureInfo(f"level{i + 1}", w, 2**i) for i, w in enumerate(widths)]
        self.min_input_size = (16, 16)  # four unpadded 2x2 pools need 2**4 pixels


class UNetUp(nn.Module):
    """One expanding step: upsample to the skip's size, concatenate the skip, two 3x3 convs.

    ``upsample="transpose"``: a learned 2x2 (``factor``) transposed conv to ``out_channels``
    (the paper's "up-convolution that halves the number of feature channels"); ``"nearest"`` /
    ``"bilinear"``: interpolation, channels unchanged (segmentation_models_pytorch's decoder).
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, factor: int,
                 upsample: str, batch_norm: bool):
        super().__init__()
        self.mode = upsample
        if upsample == "transpose":
            self.up = nn.ConvTranspose2d(in_channels, out_channels, factor, stride=factor)
            _init_conv(self.up)
            in_channels = out_channels
        else:
            self.up = None  # interpolation, in forward (to the skip's exact size)
        self.convs = DoubleConv(in_channels + skip_channels, out_channels, batch_norm)

    def upsample(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """``x`` brought to ``size``: the transposed conv, or interpolation."""
        size = tuple(size)
        if self.mode == "transpose":
            x = self.up(x)
        if tuple(x.shape[-2:]) != size:
            # Exact multiples for same-padded encoders on padded inputs; encoders with unpadded
            # convs (AlexNet-like) give other sizes, matched by interpolation.
            mode = "nearest" if self.mode == "nearest" else "bilinear"
            x = F.interpolate(x, size=size, mode=mode,
                              **({} if mode == "nearest" else {"align_corners": False}))
        return x

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None,
                size: Sequence[int]) -> torch.Tensor:
        x = self.upsample(x, size)
        return self.convs(x if skip is None else torch.cat([skip, x], dim=1))


#: segmentation_models_pytorch's Unet decoder widths (one per step), 16 for any further step
SMP_DECODER_CHANNELS = (256, 128, 64, 32, 16)


def decoder_levels(feature_info: Sequence[FeatureInfo]) -> list[tuple[int, int | None]]:
    """The expanding path for an encoder: ``(reduction, skip stage index or None)`` per step,
    from the deepest stage's reduction down to full resolution (1): one step per shallower
    reduction the encoder has, concatenating the last stage at it, and a last step to /1
    without a skip when no stage is at full resolution (ResNet's stem is at /2). Steps may jump
    by more than 2 (an encoder with stages at /4 and /16 gives a 4x step)."""
    deepest = feature_info[-1].reduction
    by_reduction = {f.reduction: i for i, f in enumerate(feature_info) if f.reduction < deepest}
    reductions = sorted(set(by_reduction) | ({1} if deepest > 1 else set()), reverse=True)
    return [(r, by_reduction.get(r)) for r in reductions]


class UNet(SegmentationModel):
    """U-Net: an encoder's stages, then per step towards full resolution an ``UNetUp`` that
    upsamples, concatenates the encoder stage of the matching reduction and applies two convs,
    then a 1x1 conv to the class scores. On ``UNetEncoder`` with transposed convs and decoder
    widths 512-256-128-64 it is the original network; on any other backbone it is the
    segmentation_models_pytorch decoder (nearest upsampling, batch norm, widths 256 ... 16)."""

    def __init__(self, encoder: nn.Module, num_classes: int,
                 decoder_channels: Sequence[int] | None = None, upsample: str = "nearest",
                 batch_norm: bool = True, name: str = "unet"):
        super().__init__()
        self.name = name
        if num_classes < 1:
            raise ValueError(f"{name}: num_classes must be >= 1, got {num_classes}")
        if upsample not in ("transpose", "nearest", "bilinear"):
            raise ValueError(f"{name}: upsample must be 'transpose', 'nearest' or 'bilinear', "
                             f"got {upsample!r}")
        info = list(encoder.feature_info)
        if getattr(encoder, "input_ndim", 4) != 4:
            raise ValueError(f"{name}: encoder {_encoder_name(encoder)!r} takes vectors, not "
                             f"images")
        self.encoder = encoder
        self.in_channels = encoder.in_channels
        self.num_classes = num_classes
        self.size_multiple = info[-1].reduction
        self.min_input_size = tuple(getattr(encoder, "min_input_size", (1, 1)))
        self.levels = decoder_levels(info)
        if decoder_channels is None:
            decoder_channels = [max(SMP_DECODER_CHANNELS[0] >> i, SMP_DECODER_CHANNELS[-1])
                                for i in range(len(self.levels))]
        if len(decoder_channels) != len(self.levels):
            raise ValueError(
                f"{name}: encoder {_encoder_name(encoder)!r} needs {len(self.levels)} decoder "
                f"widths (one per step to /{', /'.join(str(r) for r, _ in self.levels)}), got "
                f"{list(decoder_channels)}")
        blocks, channels, reduction = [], info[-1].channels, info[-1].reduction
        for (r, skip), width in zip(self.levels, decoder_channels):
            if reduction % r:
                raise ValueError(f"{name}: cannot upsample from /{reduction} to /{r} by an "
                                 f"integer factor")
            skip_channels = info[skip].channels if skip is not None else 0
            blocks.append(UNetUp(channels, skip_channels, width, reduction // r, upsample,
                                 batch_norm))
            channels, reduction = width, r
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(channels, num_classes, 1)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        # The steps of UNetUp.forward, written out so that no reference outlives its use: each
        # skip leaves the list once concatenated and the upsampled map is a temporary, so in
        # inference both are freed before the convs run (autograd keeps what backward needs).
        stages = list(self.encoder.forward_stages(x))
        h, stages[-1] = stages[-1], None
        for block, (r, skip) in zip(self.decoder, self.levels):
            if skip is None:
                h = block.convs(block.upsample(h, (x.shape[-2] // r, x.shape[-1] // r)))
                continue
            h = torch.cat([stages[skip], block.upsample(h, stages[skip].shape[-2:])], dim=1)
            stages[skip] = None
            h = block.convs(h)
        return self.head(h)


# --------------------------------------------------------------------------------------------
# Registered builders
# --------------------------------------------------------------------------------------------

def _fcn(stride: int, num_classes: int, in_channels: int, encoder, **kw) -> FCN:
    backbone = resolve_encoder(f"fcn{stride}s", encoder, in_channels, default="vgg16")
    return FCN(backbone, num_classes, stride=stride, **kw)


@SEGMENTATION_MODELS.register("fcn32s")
def fcn32s(num_classes: int, in_channels: int = 3, encoder=None, **kw) -> FCN:
    """FCN-32s (Long et al. 2015) on VGG-16: class scores upsampled 32x in one step.

    kw: ``fc_channels`` (4096), ``dropout`` (0.5), ``learn_final_upsampling`` (False)."""
    return _fcn(32, num_classes, in_channels, encoder, **kw)


@SEGMENTATION_MODELS.register("fcn16s")
def fcn16s(num_classes: int, in_channels: int = 3, encoder=None, **kw) -> FCN:
    """FCN-16s (Long et al. 2015) on VGG-16: scores fused with pool4's, upsampled 16x."""
    return _fcn(16, num_classes, in_channels, encoder, **kw)


@SEGMENTATION_MODELS.register("fcn8s")
def fcn8s(num_classes: int, in_channels: int = 3, encoder=None, **kw) -> FCN:
    """FCN-8s (Long et al. 2015) on VGG-16: pool4 and pool3 skips; 134.5M params at 21 classes."""
    return _fcn(8, num_classes, in_channels, encoder, **kw)


@SEGMENTATION_MODELS.register("segnet")
def segnet(num_classes: int, in_channels: int = 3, encoder=None, **kw) -> SegNet:
    """SegNet (Badrinarayanan et al. 2017): VGG-16-BN encoder, max-unpooling mirrored decoder.

    kw: ``final_batch_norm`` (False; True gives ptsemseg's layout)."""
    backbone = resolve_encoder("segnet", encoder, in_channels, default="vgg16_bn")
    return SegNet(backbone, num_classes, **kw)


@SEGMENTATION_MODELS.register("unet")
def unet(num_classes: int, in_channels: int = 3, encoder=None, *,
         base_channels: int | None = None, batch_norm: bool | None = None,
         decoder_channels: Sequence[int] | None = None, upsample: str | None = None) -> UNet:
    """U-Net (Ronneberger et al. 2015), or its decoder on any backbone given as ``encoder``.

    Without ``encoder``: the original network, widths ``base_channels`` (64) x (1 ... 16),
    transposed-conv upsampling, no batch norm unless ``batch_norm=True``. With ``encoder``
    (a registered name such as ``"resnet34"`` or a built backbone): segmentation_models_pytorch's
    decoder, nearest upsampling, batch norm, ``decoder_channels`` 256, 128, 64, 32, 16."""
    if encoder is None:
        bn = bool(batch_norm)
        backbone = UNetEncoder(in_channels, base_channels or 64, bn)
        widths = [f.channels for f in backbone.feature_info[-2::-1]]
        return UNet(backbone, num_classes, decoder_channels or widths, upsample or "transpose",
                    bn)
    if base_channels is not None:
        raise ValueError("unet: base_channels sets the original U-Net's widths; with an "
                         "encoder, set the decoder's with decoder_channels")
    backbone = resolve_encoder("unet", encoder, in_channels)
    return UNet(backbone, num_classes, decoder_channels, upsample or "nearest",
                True if batch_norm is None else batch_norm)


def build_segmentation_model(name: str, num_classes: int, in_channels: int = 3,
                             encoder: str | nn.Module | None = None, **kw) -> nn.Module:
    """Build the segmentation model registered as ``name`` (``fcn32s``, ``fcn16s``, ``fcn8s``,
    ``segnet``, ``unet`` or a plugin's) for ``num_classes`` classes and ``in_channels`` input
    channels; ``encoder`` is a registered backbone's name or a built backbone."""
    build: Callable[..., nn.Module] = SEGMENTATION_MODELS.get(name)
    model = build(num_classes, in_channels=in_channels, encoder=encoder, **kw)
    model.name = name
    return model
