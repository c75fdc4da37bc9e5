"""The MNIST "techniques ladder" of Michael Nielsen, "Neural Networks and Deep Learning", ch. 6
(2015, its ``network3.py``), plus a small VGG-style net.

Each architecture is registered twice: the convolutional part as a backbone, the whole network
(backbone + fully connected head) as a model. All take 28x28 digits; the models' heads are built
for ``input_size=28`` (pass another size to rebuild the flatten layer).

========================  ================================================  ==============
name                      architecture                                       Nielsen (full
                                                                             MNIST, %)
========================  ================================================  ==============
``mnist_conv1``           conv-pool 20@5x5, fc100, softmax; sigmoid          98.78
``mnist_conv2``           + conv-pool 40@5x5; sigmoid                        99.06
``mnist_conv2_relu``      as conv2 with ReLU                                 99.23
``mnist_conv2_dropout``   ReLU, two fc1000, dropout 0.5 before each fc       99.60 (expanded
                                                                             data)
``mnist_fc100``           the ladder's first step: 784-100-10, sigmoid       97.80
``mnist_deep``            3x3 convs 32-32-pool-64-64-pool, fc256 + dropout   (not in the book)
                          0.5, ReLU, He initialization
``deep_convnet``          "Deep Learning from Scratch" ch. 8: 3x3 convs      99.38 (its
                          16-16-pool-32-32-pool-64-64-pool (the 4th padded   book)
                          2), fc50 + dropout 0.5, fc10 + dropout 0.5, ReLU,
                          He initialization
========================  ================================================  ==============

Nielsen's conv-pool layer computes ``act(maxpool(conv(x)) + b)``; for a max pool and a
monotonic activation that equals ``maxpool(act(conv(x) + b))``, which is what is done here
(pool first: the activation runs on 4x fewer values). His dropout is applied to the *input* of
each fully connected layer, output layer included, which ``mnist_conv2_dropout`` follows.
Weights keep PyTorch's default initialization except in ``mnist_deep`` (He et al. 2015).
"""

from __future__ import annotations

from torch import nn

from rlgen.vision.backbones import register_backbone, register_model
from rlgen.vision.backbones.base import Backbone, FeatureInfo
from rlgen.vision.layers import BackboneClassifier, ConvBNAct

_ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU}


class ConvPool(nn.Sequential):
    """Nielsen's ConvPoolLayer: valid ``k x k`` convolution, 2x2 max pool, activation."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, act: str):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size)
        self.pool = nn.MaxPool2d(2)
        self.act = _ACTIVATIONS[act]()


class NielsenConvNet(Backbone):
    """One or two conv-pool layers of 5x5 filters (20 then 40 maps)."""

    def __init__(self, in_channels: int = 1, num_layers: int = 2, act: str = "relu"):
        super().__init__()
        if num_layers not in (1, 2):
            raise ValueError(f"num_layers must be 1 or 2, got {num_layers}")
        if act not in _ACTIVATIONS:
            raise ValueError(f"act must be one of {sorted(_ACTIVATIONS)}, got {act!r}")
        self.name = f"mnist_conv{num_layers}"
        self.in_channels = in_channels
        widths = (20, 40)[:num_layers]
        self.stages = nn.ModuleList()
        self.feature_info = []
        c = in_channels
        for i, w in enumerate(widths):
            self.stages.append(ConvPool(c, w, 5, act))
            self.feature_info.append(FeatureInfo(f"conv{i + 1}", w, 2 ** (i + 1)))
            c = w
        # Each stage needs a conv output of at least 2 (so the pool keeps one unit):
        # one layer: H - 4 >= 2 -> 6; two layers: (H - 4) // 2 - 4 >= 2 -> 16.
        self.min_input_size = (6, 6) if num_layers == 1 else (16, 16)


class MnistDeep(Backbone):
    """VGG-style: two blocks of two 3x3 'same' convolutions + ReLU, then a 2x2 max pool;
    32 then 64 maps; 28x28 -> 64x7x7."""

    def __init__(self, in_channels: int = 1, widths: tuple[int, int] = (32, 64)):
        super().__init__()
        self.name = "mnist_deep"
        self.in_channels = in_channels
        self.stages = nn.ModuleList()
        self.feature_info = []
        c = in_channels
        for i, w in enumerate(widths):
            block = nn.Sequential(
                ConvBNAct(c, w, 3, norm=False), ConvBNAct(w, w, 3, norm=False), nn.MaxPool2d(2)
            )
            self.stages.append(block)
            self.feature_info.append(FeatureInfo(f"block{i + 1}", w, 2 ** (i + 1)))
            c = w
        # each block halves the size (floor): at least one unit left after the last pool
        self.min_input_size = (2 ** len(widths), 2 ** len(widths))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)


class Pixels(Backbone):
    """No layers: the image itself is the feature map (for the fully connected nets)."""

    def __init__(self, in_channels: int = 1):
        super().__init__()
        self.name, self.in_channels = "pixels", in_channels
        self.feature_info = [FeatureInfo("pixels", in_channels, 1)]

    def forward_stages(self, x):
        self.check_input(x)
        return [x]


class DeepConvNet(Backbone):
    """Saito, "Deep Learning from Scratch" (2016), ch. 8 ``deep_convnet``: three blocks of two
    3x3 convolutions + ReLU and a 2x2 max pool, 16 / 32 / 64 maps; all convolutions are padded
    1 except the fourth, padded 2 (so 28x28 -> 16x16 before the second pool, 64x4x4 at the end).
    He initialization."""

    def __init__(self, in_channels: int = 1):
        super().__init__()
        self.name, self.in_channels = "deep_convnet", in_channels
        self.stages, self.feature_info = nn.ModuleList(), []
        c = in_channels
        for i, (w, pads) in enumerate([(16, (1, 1)), (32, (1, 2)), (64, (1, 1))]):
            convs = []
            for pad in pads:
                convs += [nn.Conv2d(c, w, 3, padding=pad), nn.ReLU(inplace=True)]
                c = w
            self.stages.append(nn.Sequential(*convs, nn.MaxPool2d(2)))
            self.feature_info.append(FeatureInfo(f"block{i + 1}", w, 2 ** (i + 1)))
        self.min_input_size = (6, 6)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)


def _named(backbone: Backbone, name: str) -> Backbone:
    backbone.name = name
    return backbone


@register_backbone("mnist_conv1")
def mnist_conv1_backbone(in_channels: int = 1, **kwargs) -> NielsenConvNet:
    """Nielsen ch. 6: one conv-pool layer, 20@5x5, sigmoid (28x28 -> 20x12x12)."""
    return _named(NielsenConvNet(in_channels, 1, "sigmoid", **kwargs), "mnist_conv1")


@register_backbone("mnist_conv2")
def mnist_conv2_backbone(in_channels: int = 1, **kwargs) -> NielsenConvNet:
    """Nielsen ch. 6: two conv-pool layers, 20 and 40 @5x5, sigmoid (28x28 -> 40x4x4)."""
    return _named(NielsenConvNet(in_channels, 2, "sigmoid", **kwargs), "mnist_conv2")


@register_backbone("mnist_conv2_relu")
def mnist_conv2_relu_backbone(in_channels: int = 1, **kwargs) -> NielsenConvNet:
    """Nielsen ch. 6: two conv-pool layers, 20 and 40 @5x5, ReLU (28x28 -> 40x4x4)."""
    return _named(NielsenConvNet(in_channels, 2, "relu", **kwargs), "mnist_conv2_relu")


@register_backbone("mnist_conv2_dropout")
def mnist_conv2_dropout_backbone(in_channels: int = 1, **kwargs) -> NielsenConvNet:
    """Nielsen ch. 6 dropout net's convolutional part (same as mnist_conv2_relu)."""
    return _named(NielsenConvNet(in_channels, 2, "relu", **kwargs), "mnist_conv2_dropout")


@register_backbone("mnist_deep")
def mnist_deep_backbone(in_channels: int = 1, **kwargs) -> MnistDeep:
    """VGG-style MNIST convs 32-32-pool-64-64-pool, ReLU, He init (28x28 -> 64x7x7)."""
    return MnistDeep(in_channels, **kwargs)


def _flat_features(backbone: Backbone, input_size: int) -> int:
    """Size of the flattened feature map for one ``input_size`` image, by a dummy forward."""
    if input_size < backbone.min_input_size[0]:
        raise ValueError(
            f"input_size {input_size} is too small for {backbone.name!r} "
            f"(needs >= {backbone.min_input_size[0]})"
        )
    c, h, w = backbone.feature_shape((backbone.in_channels, input_size, input_size))
    return c * h * w


def _classifier(
    backbone: Backbone, num_classes: int, input_size: int, hidden_sizes: tuple[int, ...],
    act: str, dropout: float = 0.0, dropout_before: bool = False, he_init: bool = False,
) -> BackboneClassifier:  # fmt: skip
    flat = _flat_features(backbone, input_size)
    layers: list[nn.Module] = []
    n = flat
    for h in hidden_sizes:
        if dropout and dropout_before:
            layers.append(nn.Dropout(dropout))
        linear = nn.Linear(n, h)
        if he_init:
            nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
            nn.init.zeros_(linear.bias)
        layers += [linear, _ACTIVATIONS[act]()]
        if dropout and not dropout_before:
            layers.append(nn.Dropout(dropout))
        n = h
    return BackboneClassifier(
        backbone, num_classes, num_features=n, hidden=nn.Sequential(*layers),
        flat_features=flat, input_size=(input_size, input_size),
        head_dropout=dropout if dropout_before else 0.0,
    )  # fmt: skip


@register_model("mnist_conv1")
def mnist_conv1(num_classes: int = 10, in_channels: int = 1, input_size: int = 28, **kwargs):
    """Nielsen ch. 6: conv-pool 20@5x5 + fc100, sigmoid (98.78% on MNIST in the book)."""
    return _classifier(mnist_conv1_backbone(in_channels, **kwargs), num_classes, input_size,
                       (100,), "sigmoid")  # fmt: skip


@register_model("mnist_conv2")
def mnist_conv2(num_classes: int = 10, in_channels: int = 1, input_size: int = 28, **kwargs):
    """Nielsen ch. 6: conv-pool 20 and 40 @5x5 + fc100, sigmoid (99.06% in the book)."""
    return _classifier(mnist_conv2_backbone(in_channels, **kwargs), num_classes, input_size,
                       (100,), "sigmoid")  # fmt: skip


@register_model("mnist_conv2_relu")
def mnist_conv2_relu(num_classes: int = 10, in_channels: int = 1, input_size: int = 28, **kwargs):
    """Nielsen ch. 6: conv-pool 20 and 40 @5x5 + fc100, ReLU (99.23% in the book)."""
    return _classifier(mnist_conv2_relu_backbone(in_channels, **kwargs), num_classes, input_size,
                       (100,), "relu")  # fmt: skip


@register_model("mnist_conv2_dropout")
def mnist_conv2_dropout(
    num_classes: int = 10, in_channels: int = 1, input_size: int = 28, dropout: float = 0.5,
    **kwargs,
):  # fmt: skip
    """Nielsen ch. 6: conv-pool 20, 40 + 2x fc1000 ReLU, dropout 0.5 before each fc (99.60%)."""
    backbone = mnist_conv2_dropout_backbone(in_channels, **kwargs)
    return _classifier(backbone, num_classes, input_size, (1000, 1000), "relu",
                       dropout=dropout, dropout_before=True)  # fmt: skip


@register_model("mnist_deep")
def mnist_deep(
    num_classes: int = 10, in_channels: int = 1, input_size: int = 28, dropout: float = 0.5,
    **kwargs,
):  # fmt: skip
    """VGG-style MNIST net: 32-32-pool-64-64-pool, fc256 ReLU + dropout 0.5, He init."""
    backbone = mnist_deep_backbone(in_channels, **kwargs)
    model = _classifier(backbone, num_classes, input_size, (256,), "relu",
                        dropout=dropout, he_init=True)  # fmt: skip
    return model


@register_model("deep_convnet")
def deep_convnet(
    num_classes: int = 10, in_channels: int = 1, input_size: int = 28, dropout: float = 0.5,
    **kwargs,
):  # fmt: skip
    """Deep Learning from Scratch ch. 8: 3x3 convs 16-16-32-32-64-64, fc50 + dropout, fc10 +
    dropout (99.38% in the book)."""
    # A model only, not a registered backbone: the padding-2 convolution makes its second
    # stage one pixel larger than a stride-4 map, which U-Net-style consumers would misalign.
    backbone = DeepConvNet(in_channels, **kwargs)
    model = _classifier(backbone, num_classes, input_size, (50,), "relu", dropout=dropout,
                        he_init=True)
    if dropout:
        model.output_drop = nn.Dropout(dropout)  # the book drops out the class scores too
    nn.init.kaiming_normal_(model.fc.weight, nonlinearity="relu")
    nn.init.zeros_(model.fc.bias)
    return model


@register_model("mnist_fc100")
def mnist_fc100(num_classes: int = 10, in_channels: int = 1, input_size: int = 28, **kwargs):
    """Nielsen ch. 6's first ladder step: 784-100-10, sigmoid hidden layer (97.80%)."""
    return _classifier(Pixels(in_channels, **kwargs), num_classes, input_size, (100,),
                       "sigmoid")
