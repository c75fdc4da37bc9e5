"""DeepFace (Taigman et al. 2014) C1..L6: the paper's geometry and parameter count, a fixed
input size, and a forward pass at a reduced size."""

import pytest
import torch

from rlgen.registry import BACKBONES
from rlgen.vision.backbones import BackboneInputError, create_backbone
from rlgen.vision.layers import LocallyConnected2d


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def paper_sized():
    # 73.5M parameters: build on the meta device (shapes only, nothing allocated or computed)
    with torch.device("meta"):
        return create_backbone("deepface", in_channels=3)


def test_paper_geometry():
    assert "deepface" in BACKBONES
    b = paper_sized()
    assert b.min_input_size == (152, 152) and b.input_size == (152, 152)
    # Fig. 2 of the paper: 142x142x32, 71x71x32, 63x63x16, 55x55x16, 25x25x16, 21x21x16.
    # (stage_sizes is what L4-L6 were built from; test_forward_at_reduced_size checks it
    # against a real forward pass, which at 152x152 would cost seconds.)
    assert b.stage_sizes == [(142, 142), (71, 71), (63, 63), (55, 55), (25, 25), (21, 21)]
    assert (b.l4.input_size, b.l4.output_size) == ((63, 63), (55, 55))
    assert (b.l5.input_size, b.l5.output_size) == ((55, 55), (25, 25))
    assert (b.l6.input_size, b.l6.output_size) == ((25, 25), (21, 21))
    assert [(f.stage, f.channels, f.reduction) for f in b.feature_info] == [
        ("c1", 32, 1), ("m2", 32, 2), ("c3", 16, 2), ("l4", 16, 2), ("l5", 16, 4), ("l6", 16, 4)
    ]  # fmt: skip
    assert all(isinstance(layer, LocallyConnected2d) for layer in (b.l4, b.l5, b.l6))


def test_paper_parameter_count():
    b = paper_sized()
    c1 = 32 * (3 * 11 * 11) + 32  # 11,648
    c3 = 16 * (32 * 9 * 9) + 16  # 41,488
    # locally connected: positions * out maps * fan-in weights, plus one bias per output unit
    l4 = 55 * 55 * 16 * (16 * 9 * 9) + 16 * 55 * 55  # 62,726,400 + 48,400
    l5 = 25 * 25 * 16 * (16 * 7 * 7) + 16 * 25 * 25  # 7,840,000 + 10,000
    l6 = 21 * 21 * 16 * (16 * 5 * 5) + 16 * 21 * 21  # 2,822,400 + 7,056
    assert [n_params(m) for m in (b.c1, b.c3, b.l4, b.l5, b.l6)] == [c1, c3, l4, l5, l6]
    assert n_params(b) == c1 + c3 + l4 + l5 + l6 == 73507392


def test_forward_at_reduced_size():
    torch.manual_seed(0)
    # 80 -> C1 70 -> M2 35 (ceil mode) -> C3 27 -> L4 19 -> L5 (19-7)//2+1 = 7 -> L6 3
    b = create_backbone("deepface", in_channels=3, input_size=80)
    x = torch.randn(2, 3, 80, 80, requires_grad=True)
    stages = b.forward_stages(x)
    assert [tuple(s.shape[1:]) for s in stages] == [
        (32, 70, 70), (32, 35, 35), (16, 27, 27), (16, 19, 19), (16, 7, 7), (16, 3, 3)
    ]  # fmt: skip
    assert [tuple(s.shape[2:]) for s in stages] == b.stage_sizes
    assert all((s >= 0).all() for s in stages)  # ReLU everywhere
    b(x).sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in b.parameters())
    assert b.feature_shape((3, 80, 80)) == (16, 3, 3)


def test_any_in_channels():
    b = create_backbone("deepface", in_channels=1, input_size=72)  # 72: the smallest size
    assert b(torch.randn(1, 1, 72, 72)).shape == (1, 16, 1, 1)


def test_other_sizes_are_clear_errors():
    b = create_backbone("deepface", in_channels=3, input_size=80)
    fixed = r"'deepface'.*fixed 80x80.*got 96x96.*input_size=96"
    with pytest.raises(BackboneInputError, match=fixed):
        b(torch.randn(1, 3, 96, 96))
    with pytest.raises(BackboneInputError, match=r"'deepface'.*at least 80x80.*got 79x80"):
        b(torch.randn(1, 3, 79, 80))
    with pytest.raises(BackboneInputError, match=r"'deepface'.*3 input channels.*got 1"):
        b(torch.randn(1, 1, 80, 80))
    with pytest.raises(ValueError, match="smallest input_size is 72"):
        create_backbone("deepface", in_channels=3, input_size=71)
