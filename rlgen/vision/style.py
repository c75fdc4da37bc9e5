"""Neural style transfer: Gatys, Ecker and Bethge, "Image Style Transfer Using Convolutional
Neural Networks" (CVPR 2016).

An image ``x`` (the only parameter; it starts as the content image) is optimised so that the
features of an ImageNet-trained VGG-19 match the content image's at one layer and the style
image's Gram matrices at several:

    L(x) = content_weight * L_content + sum_l w_l * E_l + tv_weight * TV(x)

Layers. Gatys et al. read ``conv4_2`` (content) and ``conv1_1, conv2_1, conv3_1, conv4_1,
conv5_1`` (style) from Caffe's VGG-19, whose ReLUs run in place on the conv's blob: what the
authors call the response of ``conv4_2`` is the rectified one. In the names of
``rlgen.vision.taps`` (where ``conv4_2`` is the conv's output before its ReLU) these are
``relu4_2`` and ``relu1_1 ... relu5_1``, the defaults here; any tap name can be given instead.

Losses, with F the layer's responses to ``x`` as an N_l x M_l matrix (N_l channels, M_l =
height x width positions), P those to the content image, G = F F^T the Gram matrix of ``x``
and A that of the style image:

- content: L_content = 1 / (N_l M_l) * sum (F - P)^2, the mean squared error. The paper writes
  1/2 * sum (F - P)^2; the authors' weights (1 and 1e3 / N_l^2, from their own PyTorch code)
  go with the mean, which also keeps the balance independent of the image size.
- style: E_l = 1 / (4 N_l^2 M_l^2) * sum (G - A)^2, the paper's equation 4. The style image
  may have another size than ``x``; each Gram matrix is then divided by its own image's M_l,
  E_l = 1 / (4 N_l^2) * sum (G / M_l - A / M_l')^2, which is equation 4 when the sizes agree.
  (The authors' PyTorch code has no 1/4: at the same weights, its style term is 4x this one.)
- weights: w_l = style_weight / N_l^2 with style_weight = 1e3 (1e3 / 64^2, 1e3 / 128^2, ...
  for VGG-19's 64, 128, 256, 512, 512 channels), content_weight = 1.
- total variation (off by default): TV(x) = sum over channels and neighbouring pixel pairs of
  the squared difference, vertical and horizontal, divided by C x H x W, on x in [0, 1].

Images are RGB in [0, 1], standardised with ImageNet's mean and standard deviation before
VGG. One step is one evaluation of the loss and its gradient (L-BFGS: one iteration of
``torch.optim.LBFGS``, no line search, lr 1, as the authors' code; Adam: one update); after
each step the image is clipped to [0, 1], so the loss history and the saved images describe
the same valid image. The optimisers see L(x) / L(x_0), the same minimiser at a fixed scale
(L-BFGS's curvature test and Adam's epsilon are absolute). Only VGG's convolutional trunk up
to the deepest tapped layer runs, as a frozen copy in eval mode.

    rlgen style --content a.png --style b.png --out c.png --weights torchvision:vgg19
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from rlgen.cli_spec import ToolSpec
from rlgen.errors import InputError
from rlgen.registry import TOOLS
from rlgen.vision.taps import FeatureTaps, resolve_taps, vgg_layer_names

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CONTENT_LAYER = "relu4_2"
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
#: the authors' per-layer style weight is STYLE_WEIGHT / N_l^2
STYLE_WEIGHT = 1e3
DEFAULT_LR = {"lbfgs": 1.0, "adam": 0.02}

RANDOM_WEIGHTS_MESSAGE = (
    "style transfer needs ImageNet-trained VGG-19 features (random features give meaningless "
    "textures): pass --weights torchvision:vgg19 (torchvision's file) or --weights FILE (a "
    "torchvision-format vgg19 state dict), or --allow-random-weights to run anyway (tests)")


class StyleResult(NamedTuple):
    """``image``: (3, H, W) in [0, 1]; ``history[k]``: the loss terms after k steps."""

    image: torch.Tensor
    history: list[dict[str, float]]


# -- the loss terms -------------------------------------------------------------------------
def imagenet_normalize(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] RGB -> standardised with ImageNet's per-channel mean and std (VGG's input)."""
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """(B, N, H, W) -> (B, N, N): G = F F^T over the H x W positions, not normalised."""
    flat = features.flatten(2)
    return flat @ flat.transpose(1, 2)


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 / (N M) * sum (F - P)^2, averaged over the batch."""
    return (features - target).square().mean()


def style_layer_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """E_l = 1 / (4 N^2) * sum (G / M - A / M')^2 (equation 4 for equal sizes), averaged over
    the batch; the target is the style image's Gram matrix already divided by its M'."""
    n, m = features.shape[1], features.shape[2] * features.shape[3]
    diff = gram_matrix(features) / m - target
    return diff.square().sum(dim=(1, 2)).mean() / (4 * n * n)


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Squared differences of vertical and horizontal neighbours, summed, over C x H x W (and
    averaged over the batch)."""
    dh = images[:, :, 1:, :] - images[:, :, :-1, :]
    dw = images[:, :, :, 1:] - images[:, :, :, :-1]
    return (dh.square().sum() + dw.square().sum()) / images.numel()


# -- the network ----------------------------------------------------------------------------
class _Trunk(nn.Module):
    """The first layers of a VGG-like ``features``: keeps the attribute name, so its layers
    have the same tap names (``relu4_2``, ...) as in the whole network."""

    def __init__(self, features: nn.Sequential):
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _average_pooling(features: nn.Sequential) -> nn.Sequential:
    # The paper's option: average instead of max pooling, "slightly more appealing results".
    return nn.Sequential(*(
        nn.AvgPool2d(m.kernel_size, m.stride, m.padding, m.ceil_mode)
        if isinstance(m, nn.MaxPool2d) else m for m in features))


def style_network(vgg: nn.Module, layers: Sequence[str],
                  pooling: Literal["max", "avg"] = "max") -> nn.Module:
    """A frozen copy (eval mode, no gradients) of ``vgg`` that computes ``layers``: for a
    VGG-like network only ``features`` up to the deepest of them, else the whole network
    (``pooling="avg"`` needs VGG-like ``features``). ``vgg`` itself is left untouched."""
    modules = resolve_taps(vgg, layers)
    features = getattr(vgg, "features", None)
    names = vgg_layer_names(features) if isinstance(features, nn.Module) else None
    indices = {id(layer): i for i, layer in enumerate(features)} if names else {}
    if names and all(id(m) in indices for m in modules.values()):
        end = max(indices[id(m)] for m in modules.values())
        trunk = features[: end + 1]
        net: nn.Module = _Trunk(_average_pooling(trunk) if pooling == "avg" else trunk)
    elif pooling == "avg":
        raise InputError("--pooling avg needs a VGG-like network (features of conv/relu/pool)")
    else:
        net = vgg
    net = copy.deepcopy(net)
    net.eval()
    net.requires_grad_(False)
    return net


def _min_side(network: nn.Module) -> int:
    """Smallest image side the network's pools leave at least one pixel of."""
    features = getattr(network, "features", None)
    if isinstance(network, _Trunk) and isinstance(features, nn.Sequential):
        return 2 ** sum(isinstance(m, nn.MaxPool2d | nn.AvgPool2d) for m in features)
    return max(getattr(network, "min_input_size", (1, 1)))


class GatysLoss(nn.Module):
    """The weighted loss terms of an image, against targets computed once from the content
    and style images. ``forward`` returns ``content``, ``style``, ``style/<layer>``, ``tv``
    (each already multiplied by its weight) and their sum ``total``."""

    def __init__(self, network: nn.Module, content: torch.Tensor, style: torch.Tensor, *,
                 content_layer: str = CONTENT_LAYER,
                 style_layers: Sequence[str] = STYLE_LAYERS, content_weight: float = 1.0,
                 style_weight: float = STYLE_WEIGHT, tv_weight: float = 0.0):
        super().__init__()
        self.network = network
        self.content_layer = content_layer
        self.style_layers = list(dict.fromkeys(style_layers))
        self.taps = FeatureTaps(network, [content_layer, *self.style_layers])
        self.content_weight, self.tv_weight = float(content_weight), float(tv_weight)
        with torch.no_grad():
            self.content_target = self._features(content)[content_layer]
            style_features = self._features(style)
        self.style_targets = {
            name: gram_matrix(f) / (f.shape[2] * f.shape[3]) for name, f in
            ((name, style_features[name]) for name in self.style_layers)}
        #: w_l = style_weight / N_l^2, N_l the layer's channels
        self.layer_weights = {name: float(style_weight) / style_features[name].shape[1] ** 2
                              for name in self.style_layers}

    def _features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.taps(imagenet_normalize(images))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self._features(images)
        terms = {"content": self.content_weight * content_loss(
            features[self.content_layer], self.content_target)}
        for name in self.style_layers:
            terms[f"style/{name}"] = self.layer_weights[name] * style_layer_loss(
                features[name], self.style_targets[name])
        terms["style"] = sum(terms[f"style/{name}"] for name in self.style_layers)
        terms["tv"] = self.tv_weight * total_variation(images)
        terms["total"] = terms["content"] + terms["style"] + terms["tv"]
        return terms


# -- the optimisation -----------------------------------------------------------------------
def _batch(image: torch.Tensor, what: str) -> torch.Tensor:
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.dim() != 4 or image.shape[:2] != (1, 3):
        raise InputError(f"the {what} image must be (3, H, W) RGB in [0, 1], "
                         f"got {tuple(image.shape)}")
    return image.float()


def initial_image(content: torch.Tensor, style: torch.Tensor,
                  init: Literal["content", "style", "noise"], seed: int = 0) -> torch.Tensor:
    """The starting point: the content image (the paper's choice for photos), the style image
    resized to the content's size, or uniform noise in [0, 1] from ``seed``."""
    if init == "content":
        return content.clone()
    if init == "style":
        return F.interpolate(style, size=content.shape[2:], mode="bilinear",
                             align_corners=False, antialias=True).clamp(0, 1)
    if init == "noise":
        noise = torch.rand(content.shape, generator=torch.Generator().manual_seed(seed))
        return noise.to(content.device)
    raise InputError(f"--init must be content, style or noise, got {init!r}")


def _make_optimizer(name: str, image: torch.Tensor, lr: float | None) -> torch.optim.Optimizer:
    if name not in DEFAULT_LR:
        raise InputError(f"--optimizer must be lbfgs or adam, got {name!r}")
    lr = DEFAULT_LR[name] if lr is None else lr
    if name == "adam":
        return torch.optim.Adam([image], lr=lr)
    # max_iter=1: one loss evaluation per step() call; the curvature history persists across
    # calls, so a loop of steps is one L-BFGS run that can be clipped and saved in between.
    return torch.optim.LBFGS([image], lr=lr, max_iter=1, history_size=100,
                             tolerance_grad=0.0, tolerance_change=0.0)


def _floats(step: int, terms: dict[str, torch.Tensor]) -> dict[str, float]:
    return {"step": step, **{name: float(value.detach()) for name, value in terms.items()}}


def style_transfer(
    content: torch.Tensor,
    style: torch.Tensor,
    vgg: nn.Module,
    steps: int = 500,
    *,
    content_layer: str = CONTENT_LAYER,
    style_layers: Sequence[str] = STYLE_LAYERS,
    content_weight: float = 1.0,
    style_weight: float = STYLE_WEIGHT,
    tv_weight: float = 0.0,
    optimizer: Literal["lbfgs", "adam"] = "lbfgs",
    lr: float | None = None,
    init: Literal["content", "style", "noise"] = "content",
    seed: int = 0,
    pooling: Literal["max", "avg"] = "max",
    device: str | torch.device | None = None,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> StyleResult:
    """Render ``content`` in the style of ``style`` (both (3, H, W) RGB in [0, 1]; they may
    differ in size) with ``vgg`` (an ImageNet-trained ``create_backbone("vgg19")`` or
    ``create_model("vgg19")``; it is not modified), on ``device`` (None: ``vgg``'s).

    ``callback(step, image)`` runs after every step with the current (1, 3, H, W) image.
    Returns the final image and ``history``: ``history[k]`` holds the loss terms (``total``,
    ``content``, ``style``, ``style/<layer>``, ``tv``, weighted) of the image after k steps,
    k = 0 ... steps. See the module docstring for the exact losses.
    """
    if steps < 0:
        raise InputError(f"--steps must be >= 0, got {steps}")
    network = style_network(vgg, [content_layer, *style_layers], pooling)
    if device is None:
        device = next(network.parameters(), torch.empty(0)).device
    network = network.to(device)
    content, style = _batch(content, "content").to(device), _batch(style, "style").to(device)
    _check_size(network, content, "content")
    _check_size(network, style, "style")
    loss_fn = GatysLoss(network, content, style, content_layer=content_layer,
                        style_layers=style_layers, content_weight=content_weight,
                        style_weight=style_weight, tv_weight=tv_weight)
    image = initial_image(content, style, init, seed).requires_grad_(True)
    history = _optimise(image, loss_fn, steps, _make_optimizer(optimizer, image, lr), callback)
    return StyleResult(image.detach()[0], history)


def _check_size(network: nn.Module, image: torch.Tensor, what: str) -> None:
    need = _min_side(network)
    if min(image.shape[2:]) < need:
        raise InputError(
            f"the {what} image is {image.shape[2]}x{image.shape[3]}, but the tapped layers "
            f"need at least {need} pixels a side (a larger --size or a less elongated image)")


def _optimise(image: torch.Tensor, loss_fn: GatysLoss, steps: int,
              optimizer: torch.optim.Optimizer,
              callback: Callable[[int, torch.Tensor], None] | None) -> list[dict[str, float]]:
    history: list[dict[str, float]] = []

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        terms = loss_fn(image)
        record = _floats(len(history), terms)
        if not math.isfinite(record["total"]):
            raise InputError(f"the loss became {record['total']} at step {record['step']}: "
                             f"the optimisation diverged; try a smaller --lr")
        # The optimisers see the loss divided by its starting value: the loss's scale varies
        # by orders of magnitude with the weights and the images, while L-BFGS's curvature
        # test (s.y > 1e-10) and Adam's epsilon are absolute. The minimiser is the same.
        objective = terms["total"] / (history[0]["total"] if history else
                                      (record["total"] or 1.0))
        objective.backward()
        history.append(record)
        return objective

    for step in range(1, steps + 1):
        optimizer.step(closure)
        with torch.no_grad():
            image.clamp_(0, 1)
        if callback is not None:
            callback(step, image.detach())
    with torch.no_grad():
        history.append(_floats(steps, loss_fn(image)))
    return history


# -- files and the command --------------------------------------------------------------------
def load_rgb(path: str | Path, size: int) -> torch.Tensor:
    """An image file as (1, 3, H, W) in [0, 1], resized (antialiased bilinear) so that its
    longer side is ``size`` pixels."""
    from rlgen.data.folder import load_image

    image = torch.tensor(load_image(path, mode="RGB")).float().div_(255).unsqueeze(0)
    h, w = image.shape[2:]
    scale = size / max(h, w)
    new = (max(1, round(h * scale)), max(1, round(w * scale)))
    if new == (h, w):
        return image
    return F.interpolate(image, size=new, mode="bilinear", align_corners=False,
                         antialias=True).clamp_(0, 1)


def side_by_side(images: Sequence[torch.Tensor], gap: int = 4) -> torch.Tensor:
    """(3, H, W') of the images side by side, each scaled to the first one's height, with
    ``gap`` white pixels between them."""
    height = images[0].shape[-2]
    panels = []
    for image in images:
        image = _batch(image, "panel").cpu()
        h, w = image.shape[2:]
        if h != height:
            image = F.interpolate(image, size=(height, max(1, round(w * height / h))),
                                  mode="bilinear", align_corners=False, antialias=True)
        panels.extend([image[0].clamp(0, 1), torch.ones(3, height, gap)])
    return torch.cat(panels[:-1], dim=2)


def sibling(out: Path, suffix: str) -> Path:
    """``c.png`` -> ``c_<suffix>.png`` in the same folder."""
    return out.with_name(f"{out.stem}_{suffix}{out.suffix}")


def _refuse_random_weights(weights: str | None, allow_random_weights: bool) -> None:
    if weights is None and not allow_random_weights:
        raise InputError(RANDOM_WEIGHTS_MESSAGE)


def load_style_vgg(model: str = "vgg19", weights: str | None = None,
                   allow_random_weights: bool = False) -> nn.Module:
    """The convolutional trunk ``create_backbone(model)`` with ``weights`` (a torchvision-format
    classifier state dict file, or a spec such as ``torchvision:vgg19`` that ``load_weights``
    resolves); its classifier tensors are ignored, but every trunk tensor must be there."""
    from rlgen.vision.backbones import create_backbone
    from rlgen.vision.backbones.weights import load_weights

    _refuse_random_weights(weights, allow_random_weights)
    backbone = create_backbone(model)
    if weights is not None:
        report = load_weights(backbone, weights, strict=False)
        if report.missing or report.mismatched:
            wrong = report.missing[:3] + [k for k, *_ in report.mismatched[:3]]
            raise InputError(
                f"--weights {weights} does not fit {model}'s convolutional layers "
                f"({len(report.missing)} missing, {len(report.mismatched)} of another shape: "
                f"{', '.join(wrong)}); is it a {model} state dict in torchvision's format?")
    return backbone


def _image_suffixes() -> set[str]:
    from PIL import Image

    Image.init()
    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE}


@dataclass
class StyleConfig:
    """Gatys et al. style transfer: render --content in the style of --style (VGG-19)."""

    content: str
    """image whose content (objects, layout) the result keeps"""
    style: str
    """image whose style (textures, colours) the result takes"""
    out: str
    """output image (PNG, JPEG, ...); c.png also gives c_side_by_side.png and c_stepNNNNN.png"""
    steps: int = 500
    """optimisation steps, each one loss and gradient evaluation (the authors ran 500 L-BFGS)"""
    size: int = 512
    """both images are resized so that their longer side is this many pixels"""
    device: str = "auto"
    """cpu, cuda, cuda:1, mps or auto (cuda, else mps, else cpu)"""
    model: str = "vgg19"
    """VGG whose features are matched (vgg19 in the paper; vgg11/13/16 and _bn variants work)"""
    weights: str | None = None
    """ImageNet-trained weights: torchvision:vgg19, or a torchvision-format state dict FILE"""
    allow_random_weights: bool = False
    """run without --weights on random features (for tests: the result is meaningless)"""
    save_every: int = 0
    """also write the image every this many steps beside --out, c_step00100.png (0: never)"""
    content_layer: str = CONTENT_LAYER
    """layer whose responses the content loss matches (the paper's conv4_2 after its ReLU)"""
    style_layers: str = ",".join(STYLE_LAYERS)
    """comma-separated layers whose Gram matrices the style loss matches (the paper's
    conv1_1 ... conv5_1 after their ReLUs; conv1_1 names the pre-ReLU response)"""
    style_weight: float = STYLE_WEIGHT
    """style layer l weighs STYLE_WEIGHT / N_l^2, N_l its channels (the authors' 1e3)"""
    content_weight: float = 1.0
    """weight of the content loss (the authors' 1)"""
    tv_weight: float = 0.0
    """weight of the total-variation smoothness term (0: off, as in the paper)"""
    optimizer: Literal["lbfgs", "adam"] = "lbfgs"
    """L-BFGS (the paper's) or Adam on the image's pixels"""
    lr: float | None = None
    """step size (None: 1 for lbfgs, as the authors; 0.02 for adam on [0, 1] pixels)"""
    init: Literal["content", "style", "noise"] = "content"
    """starting image: the content image, the style image resized, or uniform noise"""
    pooling: Literal["max", "avg"] = "max"
    """VGG's pooling: max as trained, or avg (the paper's choice for synthesis)"""
    seed: int = 0
    """random seed (noise init; the random weights of --allow-random-weights)"""

    def __post_init__(self) -> None:
        _refuse_random_weights(self.weights, self.allow_random_weights)
        for flag, value in (("--steps", self.steps), ("--save-every", self.save_every)):
            if value < 0:
                raise InputError(f"{flag} must be >= 0, got {value}")
        if self.size < 1:
            raise InputError(f"--size must be >= 1, got {self.size}")
        for flag, value in (("--style-weight", self.style_weight),
                            ("--content-weight", self.content_weight),
                            ("--tv-weight", self.tv_weight)):
            if not (math.isfinite(value) and value >= 0):
                raise InputError(f"{flag} must be a finite number >= 0, got {value}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"--lr must be a finite number > 0, got {self.lr}")
        if not self.layer_list():
            raise InputError("--style-layers must name at least one layer, e.g. relu1_1,relu2_1")
        if Path(self.out).suffix.lower() not in _image_suffixes():
            raise InputError(f"--out must end in an image extension such as .png or .jpg, "
                             f"got {self.out!r}")

    def layer_list(self) -> list[str]:
        return list(dict.fromkeys(n.strip() for n in self.style_layers.split(",") if n.strip()))


def _check_layers(vgg: nn.Module, config: StyleConfig) -> None:
    """Unknown layer names as errors that name their flag."""
    for flag, names in (("--content-layer", [config.content_layer]),
                        ("--style-layers", config.layer_list())):
        try:
            resolve_taps(vgg, names)
        except InputError as exc:
            raise InputError(f"{flag}: {exc}") from None


def _input_file(path: str, flag: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"{flag} {path}: no such file")
    return p


def run_style(config: StyleConfig) -> dict:
    """``rlgen style``: write the result, the intermediate images and the side-by-side image;
    print one JSON line with the final losses and the paths, and return it."""
    from rlgen.data.images import save_image
    from rlgen.runtime import resolve_device

    start = time.perf_counter()
    content_path = _input_file(config.content, "--content")
    style_path = _input_file(config.style, "--style")
    out = Path(config.out).expanduser()
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)  # the random weights of --allow-random-weights
    vgg = load_style_vgg(config.model, config.weights, config.allow_random_weights)
    _check_layers(vgg, config)
    content, style = load_rgb(content_path, config.size), load_rgb(style_path, config.size)
    intermediates: list[str] = []

    def save_intermediate(step: int, image: torch.Tensor) -> None:
        if config.save_every and step % config.save_every == 0:
            intermediates.append(str(save_image(image[0].cpu(), sibling(out, f"step{step:05d}"))))

    result = style_transfer(
        content, style, vgg, config.steps, content_layer=config.content_layer,
        style_layers=config.layer_list(), content_weight=config.content_weight,
        style_weight=config.style_weight, tv_weight=config.tv_weight,
        optimizer=config.optimizer, lr=config.lr, init=config.init, seed=config.seed,
        pooling=config.pooling, device=device, callback=save_intermediate)
    image = result.image.cpu()
    save_image(image, out)
    panels = side_by_side([content[0], style[0], image])
    pair = save_image(panels, sibling(out, "side_by_side"))
    summary = {
        "out": str(out), "side_by_side": str(pair), "intermediates": intermediates,
        "steps": config.steps, "optimizer": config.optimizer, "size": list(image.shape[1:]),
        "device": str(device), "weights": config.weights,
        "initial_loss": result.history[0]["total"],
        "losses": {k: v for k, v in result.history[-1].items() if k != "step"},
        "seconds": round(time.perf_counter() - start, 2),
    }
    print(json.dumps(summary))
    return summary


@TOOLS.register("style")
def style_tool() -> ToolSpec:
    """Gatys et al. neural style transfer with VGG-19 (rlgen style --help)."""
    return ToolSpec(config=StyleConfig, run=run_style)
