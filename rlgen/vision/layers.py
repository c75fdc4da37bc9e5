"""Shared building blocks for rlgen's CNN backbones.

- ``ConvBNAct``: convolution, optional batch norm, optional activation (as torchvision's
  ``Conv2dNormActivation``), children named ``conv`` / ``bn`` / ``act``.
- ``LocallyConnected2d``: a convolution whose filters are *not* shared across positions, as in
  the L4-L6 layers of DeepFace (Taigman et al., "DeepFace: Closing the Gap to Human-Level
  Performance in Face Verification", CVPR 2014).
- ``BackboneClassifier``: a backbone plus a small head (flatten or global pool, hidden fully
  connected layers, output layer) exposing timm's ``forward_features`` / ``forward_head`` /
  ``reset_classifier`` interface.

This module depends on torch only (backbones import it, never the other way round).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair


class ConvBNAct(nn.Sequential):
    """``Conv2d`` -> ``BatchNorm2d`` (if ``norm``) -> activation (if ``act_layer``).

    ``padding=None`` pads ``(kernel_size - 1) // 2`` (size-preserving for odd kernels at stride 1);
    pass ``padding=0`` for the "valid" convolutions of the older papers. ``bias=None`` gives the
    convolution a bias only when there is no batch norm right after it (BN's shift replaces it).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | None = None,
        *,
        groups: int = 1,
        norm: bool = True,
        act_layer: Callable[[], nn.Module] | None = nn.ReLU,
        bias: bool | None = None,
    ):
        kernel_size = _pair(kernel_size)
        if padding is None:
            padding = ((kernel_size[0] - 1) // 2, (kernel_size[1] - 1) // 2)
        if bias is None:
            bias = not norm
        layers: dict[str, nn.Module] = {
            "conv": nn.Conv2d(
                in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias
            )
        }
        if norm:
            layers["bn"] = nn.BatchNorm2d(out_channels)
        if act_layer is not None:
            layers["act"] = act_layer()
        super().__init__()
        for name, layer in layers.items():
            self.add_module(name, layer)
        self.in_channels = in_channels
        self.out_channels = out_channels


def conv_output_size(size: int, kernel_size: int, stride: int = 1, padding: int = 0) -> int:
    """Output length of a convolution or pooling along one axis (floor mode)."""
    return (size + 2 * padding - kernel_size) // stride + 1


class LocallyConnected2d(nn.Module):
    """A 2-D layer like ``Conv2d`` but with a different filter at every output position.

    DeepFace's L4-L6 use this because different regions of an aligned face have different local
    statistics. The price is a fixed input size (one filter bank per output position) and many
    parameters.

    Parameters:
        weight: ``(out_h * out_w, out_channels, in_channels * kh * kw)``. Row ``l`` is the filter
            bank of output position ``l = i * out_w + j`` (row-major); the last axis follows
            ``F.unfold``'s patch order (channel, then kernel row, then kernel column).
        bias: ``(out_channels, out_h, out_w)``, one bias per output unit (nothing is shared).

    Computation: ``F.unfold`` extracts every patch as a column ``(N, C*kh*kw, L)``; an
    ``einsum`` applies each position's own filter bank to its own column.
    Initialization follows ``Conv2d``: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        input_size: int | tuple[int, int],
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        bias: bool = True,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.input_size = _pair(input_size)
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.output_size = tuple(
            conv_output_size(n, k, s, p)
            for n, k, s, p in zip(self.input_size, self.kernel_size, self.stride, self.padding)
        )
        if min(self.output_size) < 1:
            raise ValueError(
                f"LocallyConnected2d: input_size {self.input_size} is too small for kernel "
                f"{self.kernel_size}, stride {self.stride}, padding {self.padding} "
                f"(output would be {self.output_size})"
            )
        out_h, out_w = self.output_size
        fan_in = in_channels * self.kernel_size[0] * self.kernel_size[1]
        self.weight = nn.Parameter(torch.empty(out_h * out_w, out_channels, fan_in))
        self.bias = nn.Parameter(torch.empty(out_channels, out_h, out_w)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.weight.shape[-1])
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = (self.in_channels, *self.input_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"LocallyConnected2d was built for inputs of shape (N, {expected[0]}, "
                f"{expected[1]}, {expected[2]}) (its unshared filters fix the input size), "
                f"got {tuple(x.shape)}"
            )
        cols = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)
        out = torch.einsum("nkl,lok->nol", cols, self.weight)
        out = out.reshape(x.shape[0], self.out_channels, *self.output_size)
        if self.bias is not None:
            out = out + self.bias
        return out

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, input_size={self.input_size}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"output_size={self.output_size}, bias={self.bias is not None}"
        )


class BackboneClassifier(nn.Module):
    """A classifier = backbone + head, with timm's interface.

    Head: the backbone's last feature map is either flattened (``flat_features`` = C*H*W for
    the input size the head was built for; another size raises a clear error) or globally
    average-pooled (``global_pool=True``, any input size); ``hidden`` maps that vector to
    ``num_features`` (the pre-logits); ``head_drop`` applies dropout to the pre-logits; ``fc``
    is the output layer (``nn.Identity`` when ``num_classes == 0``); ``output_drop`` (off by
    default) applies dropout to its scores.

    Attributes: ``backbone``, ``num_classes``, ``num_features``, ``input_size`` ((H, W) the head
    was built for, or ``None`` when any size the backbone takes works).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        num_features: int,
        hidden: nn.Module | None = None,
        flat_features: int | None = None,
        global_pool: bool = False,
        head_dropout: float = 0.0,
        output_dropout: float = 0.0,
        input_size: tuple[int, int] | None = None,
    ):
        super().__init__()
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0 = no output layer), got {num_classes}")
        if (flat_features is None) == (not global_pool):
            raise ValueError("give exactly one of flat_features (flatten) or global_pool=True")
        self.backbone = backbone
        self.global_pool = global_pool
        self.flat_features = flat_features
        self.input_size = input_size
        self.hidden = hidden if hidden is not None else nn.Identity()
        self.head_drop = nn.Dropout(head_dropout) if head_dropout > 0 else nn.Identity()
        # Dropout on the class scores themselves ("Deep Learning from Scratch"'s deep net)
        self.output_drop = nn.Dropout(output_dropout) if output_dropout > 0 else nn.Identity()
        self.num_features = num_features
        self.num_classes = num_classes
        self.fc = self._make_fc(num_features, num_classes)

    def _make_fc(self, num_features: int, num_classes: int) -> nn.Module:
        return nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the output layer by a fresh one for ``num_classes`` (0: no output layer)."""
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0 = no output layer), got {num_classes}")
        p = next(self.parameters())
        self.num_classes = num_classes
        self.fc = self._make_fc(self.num_features, num_classes).to(device=p.device, dtype=p.dtype)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map -> vector: global average pool, or flatten (checking the size)."""
        if self.global_pool:
            return x.mean(dim=(2, 3)) if x.dim() == 4 else x.flatten(1)
        x = x.flatten(1)
        if x.shape[1] != self.flat_features:
            size = ""
            if self.input_size is not None:
                size = f" for {self.input_size[0]}x{self.input_size[1]} inputs"
            raise ValueError(
                f"{type(self).__name__}: the head was built{size} and expects "
                f"{self.flat_features} features after flattening, got {x.shape[1]}; "
                f"build the model with input_size=<your image size>"
            )
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.hidden(self.pool(x))
        if pre_logits:
            return x
        return self.output_drop(self.fc(self.head_drop(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
