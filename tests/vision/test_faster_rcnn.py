"""Faster R-CNN: anchors against a direct computation, anchor / proposal labelling and sampling
on hand-built cases, the detector contract (losses, gradients, output format, errors, autocast),
the FPN variant, Fast R-CNN on given proposals."""

import math

import pytest
import torch

from rlgen.registry import DETECTION_MODELS
from rlgen.vision.backbones import create_backbone
from rlgen.vision.boxes import box_iou
from rlgen.vision.detection.anchors import AnchorGenerator, default_anchor_sizes
from rlgen.vision.detection.faster_rcnn import FasterRCNNInputError, faster_rcnn
from rlgen.vision.detection.roi_heads import RoIPooler, assign_levels
from rlgen.vision.detection.roi_pooling import roi_align
from rlgen.vision.detection.rpn import BELOW_LOW, BETWEEN, match_boxes, sample_balanced

SMALL = dict(representation_size=64, rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=60,
             rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=30,
             box_batch_size_per_image=32)


def small_model(num_classes=3, in_channels=3, **kw):
    torch.manual_seed(0)
    backbone = create_backbone("dcgan_discriminator", in_channels=in_channels, width=8,
                               num_stages=3)
    return faster_rcnn(num_classes, in_channels, backbone, image_size=(48, 48),
                       **{**SMALL, **kw})


def two_targets():
    return [{"boxes": torch.tensor([[4.0, 5.0, 20.0, 30.0], [18.0, 10.0, 44.0, 40.0]]),
             "labels": torch.tensor([0, 2])},
            {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]


# -- anchors --------------------------------------------------------------------------------


def test_anchors_match_a_direct_computation():
    sizes, ratios, stride = (12.0, 30.0), (0.5, 1.0, 2.0), 8
    gen = AnchorGenerator([sizes], ratios, [stride])
    (anchors,) = gen([(3, 5)])
    assert anchors.shape == (3 * 5 * 6, 4)
    expected = []
    for i in range(3):  # rows
        for j in range(5):  # columns
            for r in ratios:
                for s in sizes:
                    half_w = round(s / math.sqrt(r) / 2)
                    half_h = round(s * math.sqrt(r) / 2)
                    cx, cy = j * stride, i * stride
                    expected.append([cx - half_w, cy - half_h, cx + half_w, cy + half_h])
    torch.testing.assert_close(anchors, torch.tensor(expected, dtype=torch.float32))
    assert gen.num_anchors_per_location() == [6]


def test_anchor_areas_and_ratios_follow_sizes():
    (cells,) = AnchorGenerator([(128.0, 256.0, 512.0)], (0.5, 1.0, 2.0), [16])([(1, 1)])
    w, h = cells[:, 2] - cells[:, 0], cells[:, 3] - cells[:, 1]
    sizes = torch.tensor([128.0, 256.0, 512.0]).repeat(3)
    ratios = torch.tensor([0.5, 1.0, 2.0]).repeat_interleave(3)
    torch.testing.assert_close(torch.sqrt(w * h) / sizes, torch.ones(9), atol=0.01, rtol=0)
    torch.testing.assert_close(h / w, ratios, atol=0, rtol=0.02)  # half-sides are rounded


def test_default_anchor_sizes_scale_with_the_image():
    assert default_anchor_sizes((600, 1000)) == ((128.0, 256.0, 512.0),)
    assert default_anchor_sizes((800, 1000)) == ((128.0, 256.0, 512.0),)
    small = default_anchor_sizes((64, 96))[0]
    assert small == pytest.approx((128 * 64 / 600, 256 * 64 / 600, 512 * 64 / 600))
    assert default_anchor_sizes((800, 800), 4, fpn=True) == ((32.0,), (64.0,), (128.0,),
                                                             (256.0,))
    assert default_anchor_sizes((400, 500), 2, fpn=True) == ((16.0,), (32.0,))
    model = small_model()
    assert model.rpn.anchors.sizes == [tuple(s * 48 / 600 for s in (128, 256, 512))]
    custom = small_model(anchor_sizes=(10, 20))
    assert custom.rpn.anchors.sizes == [(10.0, 20.0)]


def test_anchor_generator_errors():
    with pytest.raises(ValueError, match="one sequence per feature level"):
        AnchorGenerator([(8.0,)], (1.0,), [4, 8])
    with pytest.raises(ValueError, match="positive"):
        AnchorGenerator([(0.0,)], (1.0,), [4])


# -- labelling and sampling -----------------------------------------------------------------


def test_rpn_anchor_labelling_on_a_hand_built_case():
    model = small_model()
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    anchors = torch.tensor([
        [0.0, 0.0, 10.0, 10.0],  # IoU 1 with gt 0: positive
        [0.0, 0.0, 10.0, 12.0],  # IoU 10/12 = 0.83: positive
        [0.0, 0.0, 10.0, 20.0],  # IoU 0.5: ignored
        [5.0, 0.0, 25.0, 10.0],  # IoU 50/250 = 0.2: negative
        [50.0, 50.0, 60.0, 75.0],  # IoU 0.4 with gt 1, its best anchor: positive anyway
        [50.0, 50.0, 60.0, 80.0],  # IoU 1/3 with gt 1: ignored
        [100.0, 100.0, 110.0, 110.0],  # overlaps nothing: negative
    ])
    labels, matched = model.rpn.label_anchors(anchors, gt)
    assert labels.tolist() == [1, 1, -1, 0, 1, -1, 0]
    torch.testing.assert_close(matched[[0, 1, 4]], gt[[0, 0, 1]])
    labels, _ = model.rpn.label_anchors(anchors, torch.zeros(0, 4))
    assert labels.tolist() == [0] * 7


def test_match_boxes_low_quality_rule_needs_an_overlap():
    iou = box_iou(torch.tensor([[0.0, 0.0, 4.0, 4.0], [90.0, 90.0, 95.0, 95.0]]),
                  torch.tensor([[0.0, 0.0, 4.0, 8.0], [0.0, 0.0, 8.0, 4.0], [20, 20, 30, 30.0]]))
    # gt 0 has IoU 0.5 with anchors 0 and 1 (a tie: both kept); gt 1 overlaps nothing
    assert match_boxes(iou, 0.7, 0.3, allow_low_quality=True).tolist() == [0, 0, BELOW_LOW]
    assert match_boxes(iou, 0.7, 0.3, allow_low_quality=False).tolist() == [BETWEEN, BETWEEN,
                                                                             BELOW_LOW]


def test_balanced_sampling_counts():
    labels = torch.cat([torch.ones(300), torch.zeros(1000), -torch.ones(50)])
    pos, neg = sample_balanced(labels, 256, 0.5)
    assert (pos.numel(), neg.numel()) == (128, 128)
    assert (labels[pos] == 1).all() and (labels[neg] == 0).all()
    assert len(set(pos.tolist())) == 128 and len(set(neg.tolist())) == 128
    pos, neg = sample_balanced(torch.cat([torch.ones(10), torch.zeros(1000)]), 256, 0.5)
    assert (pos.numel(), neg.numel()) == (10, 246)
    pos, neg = sample_balanced(torch.cat([torch.ones(10), torch.zeros(20)]), 256, 0.5)
    assert (pos.numel(), neg.numel()) == (10, 20)


def test_head_proposal_sampling_on_a_hand_built_case():
    model = small_model(box_batch_size_per_image=8, box_bg_iou_low=0.1)
    gt = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([2])}
    proposals = torch.tensor([
        [0.0, 0.0, 10.0, 12.0],  # IoU 0.83: foreground, class 2 -> label 3
        [0.0, 0.0, 10.0, 20.0],  # IoU 0.5: foreground
        [0.0, 0.0, 10.0, 25.0],  # IoU 0.4: background
        [8.0, 8.0, 18.0, 18.0],  # IoU 4/196: below bg_iou_low 0.1, ignored
        [0.0, 5.0, 10.0, 40.0],  # IoU 50/350 = 0.14: background
    ] + [[30.0 + i, 30.0, 40.0 + i, 40.0] for i in range(2)])  # IoU 0: ignored too
    sampled, labels, deltas = model.roi_heads.sample_proposals([proposals], [gt])
    (boxes,) = sampled
    # 8 * 25% = 2 foreground at most among 3 (the two and the ground truth itself), then the
    # two backgrounds; the ignored ones never
    assert labels.tolist().count(3) == 2 and labels.tolist().count(0) == 2
    assert labels.numel() == 4
    background = boxes[labels == 0]
    assert sorted(background[:, 3].tolist()) == [25.0, 40.0]
    fg = labels == 3
    # regression targets of the foreground: weights (10, 10, 5, 5) of the box coding
    w = boxes[fg, 2] - boxes[fg, 0]
    h = boxes[fg, 3] - boxes[fg, 1]
    torch.testing.assert_close(deltas[fg, 3], 5 * torch.log(10.0 / h))
    torch.testing.assert_close(deltas[fg, 2], 5 * torch.log(10.0 / w))


def test_ground_truth_is_added_to_the_proposals():
    model = small_model(box_batch_size_per_image=512)
    gt = {"boxes": torch.tensor([[3.0, 4.0, 13.0, 18.0]]), "labels": torch.tensor([1])}
    sampled, labels, _ = model.roi_heads.sample_proposals([torch.zeros(0, 4)], [gt])
    assert labels.tolist() == [2]
    torch.testing.assert_close(sampled[0], gt["boxes"])


# -- the model contract ---------------------------------------------------------------------


def test_losses_are_finite_and_reach_every_part():
    model = small_model()
    images = torch.rand(2, 3, 48, 48)
    losses = model(images, two_targets())
    assert set(losses) == {"rpn_objectness", "rpn_box", "roi_class", "roi_box", "loss"}
    for value in losses.values():
        assert value.dim() == 0 and torch.isfinite(value) and value.dtype == torch.float32
    total = sum(v for k, v in losses.items() if k != "loss")
    torch.testing.assert_close(losses["loss"], total)
    losses["loss"].backward()
    for part in (model.backbone, model.rpn, model.roi_heads):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0


def test_loss_weights_weigh_the_total():
    model = small_model(loss_weights={"roi_box": 0.0, "rpn_box": 2.0})
    torch.manual_seed(1)
    losses = model(torch.rand(2, 3, 48, 48), two_targets())
    want = (losses["rpn_objectness"] + 2 * losses["rpn_box"] + losses["roi_class"])
    torch.testing.assert_close(losses["loss"], want)


def test_detections_follow_the_contract():
    model = small_model().eval()
    model.score_threshold = 0.0
    model.max_detections = 7
    with torch.no_grad():
        out = model(torch.rand(3, 3, 48, 40))
    assert isinstance(out, list) and len(out) == 3
    for det in out:
        assert set(det) == {"boxes", "scores", "labels"}
        boxes, scores, labels = det["boxes"], det["scores"], det["labels"]
        assert boxes.shape == (scores.shape[0], 4) and 0 < scores.shape[0] <= 7
        assert labels.dtype == torch.int64 and labels.min() >= 0 and labels.max() < 3
        assert (scores[:-1] >= scores[1:]).all() and (scores >= 0).all()
        assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= 40).all()
        assert (boxes[:, 1::2] >= 0).all() and (boxes[:, 1::2] <= 48).all()
    model.score_threshold = 0.999
    with torch.no_grad():
        assert all(d["boxes"].shape == (0, 4) for d in model(torch.rand(1, 3, 48, 48)))


def test_training_mode_does_not_change_what_is_returned():
    model = small_model()  # train mode, no targets: detections
    out = model(torch.rand(1, 3, 48, 48))
    assert isinstance(out, list) and set(out[0]) == {"boxes", "scores", "labels"}
    model.eval()  # eval mode with targets: losses
    assert "loss" in model(torch.rand(2, 3, 48, 48), two_targets())


def test_any_channel_count_and_class_count_through_the_registry():
    build = DETECTION_MODELS.get("faster_rcnn")
    backbone = create_backbone("mnist_deep", in_channels=1, widths=(8, 16))
    model = build(1, in_channels=1, backbone=backbone, image_size=(32, 32), **SMALL)
    targets = [{"boxes": torch.tensor([[2.0, 3.0, 20.0, 25.0]]), "labels": torch.tensor([0])}]
    losses = model(torch.rand(1, 1, 32, 32), targets)
    assert torch.isfinite(losses["loss"])
    assert model.image_mean.shape == (1, 1, 1, 1)
    named = build(5, in_channels=2, backbone="mnist_deep", image_size=(32, 32), **SMALL)
    assert named.backbone.in_channels == 2 and named.num_classes == 5
    assert named.roi_heads.predictor.cls_score.out_features == 6


def test_stage_option_picks_the_feature_map():
    model = small_model(stage="stage2")
    assert model.strides == [4] and model.stage_indices == [1]
    assert small_model(stage=0).strides == [2]
    with pytest.raises(FasterRCNNInputError, match="no stage 'layer9'"):
        small_model(stage="layer9")


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_autocast_on_cpu_gives_fp32_losses(dtype):
    model = small_model()
    with torch.autocast("cpu", dtype=dtype):
        losses = model(torch.rand(2, 3, 48, 48), two_targets())
        detections = model.eval()(torch.rand(1, 3, 48, 48))
    for value in losses.values():
        assert value.dtype == torch.float32 and torch.isfinite(value)
    losses["loss"].backward()
    assert detections[0]["boxes"].dtype == torch.float32


def test_bad_inputs_get_clear_errors():
    model = small_model()
    image = torch.rand(1, 3, 48, 48)
    good = [{"boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0]]), "labels": torch.tensor([0])}]
    cases = [
        (lambda: model(torch.rand(3, 48, 48)), r"faster_rcnn: expects images \(B, 3, H, W\)"),
        (lambda: model(torch.rand(1, 1, 48, 48)), "built for 3 input channels"),
        (lambda: model(torch.zeros(1, 3, 48, 48, dtype=torch.uint8)), "float images"),
        (lambda: model(torch.rand(1, 3, 4, 4)), "at least 8x8"),
        (lambda: model(image, good * 2), "list of 1 dicts"),
        (lambda: model(image, [{"boxes": torch.zeros(2, 5), "labels": torch.zeros(2).long()}]),
         r"must have shape \(N, 4\)"),
        (lambda: model(image, [{"boxes": good[0]["boxes"], "labels": torch.tensor([3])}]),
         r"must lie in 0\.\.2"),
        (lambda: model(image, [{"boxes": good[0]["boxes"], "labels": torch.tensor([0.0])}]),
         "must be integers"),
        (lambda: model(image, [{"boxes": torch.tensor([[5.0, 1, 2, 9]]), "labels": good[0][
            "labels"]}]), "x2 > x1"),
        (lambda: model(image, [{"labels": good[0]["labels"]}]), "dict with 'boxes'"),
        (lambda: model(image, proposals=[torch.zeros(3, 3)]), r"proposals\[0\]"),
        (lambda: small_model(box_head="deep"), "box_head must be"),
        (lambda: small_model(pool_sizes=3), r"unknown option\(s\) \['pool_sizes'\]"),
        (lambda: small_model(num_classes=0), "num_classes must be >= 1"),
        (lambda: small_model(loss_weights={"total": 1}), "unknown loss 'total'"),
        (lambda: faster_rcnn(2, 1, create_backbone("mnist_deep", in_channels=3)),
         "takes 3 input channels"),
    ]
    for call, message in cases:
        with pytest.raises(FasterRCNNInputError, match=message):
            call()


# -- FPN ------------------------------------------------------------------------------------


def test_fpn_variant_shapes():
    torch.manual_seed(0)
    model = faster_rcnn(3, 3, "resnet18", image_size=(64, 64), fpn=True, fpn_channels=32,
                        **SMALL)
    assert [model.backbone.feature_info[i].stage for i in model.stage_indices] == [
        "layer1", "layer2", "layer3", "layer4"]
    assert model.strides == [4, 8, 16, 32]
    assert model.rpn.anchors.sizes == [(s * 64 / 800,) for s in (32, 64, 128, 256)]
    features = model.features(torch.rand(2, 3, 64, 64))
    assert [tuple(f.shape) for f in features] == [(2, 32, 16, 16), (2, 32, 8, 8), (2, 32, 4, 4),
                                                  (2, 32, 2, 2)]
    objectness, deltas = model.rpn.head(features)
    assert [o.shape[1] for o in objectness] == [3] * 4 and [d.shape[1] for d in deltas] == [12] * 4
    losses = model(torch.rand(2, 3, 64, 64), [two_targets()[0]] * 2)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    assert all(p.grad is not None for p in model.fpn.parameters())
    model.eval()
    assert len(model(torch.rand(1, 3, 64, 64))) == 1
    chosen = faster_rcnn(2, 3, "resnet18", image_size=(64, 64), fpn=True,
                         fpn_stages=["layer2", "layer3"], anchor_sizes=(6, 12), **SMALL)
    assert chosen.strides == [8, 16] and chosen.rpn.anchors.sizes == [(6.0,), (12.0,)]
    with pytest.raises(FasterRCNNInputError, match="increasing reduction"):
        faster_rcnn(2, 3, "resnet18", fpn=True, fpn_stages=["layer3", "layer2"])


def test_fpn_level_assignment_follows_the_paper():
    strides = [4, 8, 16, 32]  # levels k = 2..5
    sides = torch.tensor([224.0, 223.0, 112.0, 448.0, 1000.0, 10.0])
    boxes = torch.stack([torch.zeros(6), torch.zeros(6), sides, sides], dim=1)
    # k = floor(4 + log2(side / 224)): 4, 3, 3, 5, 6 -> 5 (clamped), 0 -> 2 (clamped)
    assert assign_levels(boxes, strides).tolist() == [2, 1, 1, 3, 3, 0]
    # the scale is settable: at 56 pixels a 56-pixel box goes to level 4
    assert assign_levels(boxes[:1] / 4, strides, canonical_scale=56.0).tolist() == [2]


def test_pooler_takes_each_box_from_its_level():
    pooler = RoIPooler([4, 8], output_size=2, canonical_scale=16.0, canonical_level=3)
    torch.manual_seed(0)
    features = [torch.randn(1, 2, 16, 16), torch.randn(1, 2, 8, 8)]
    small = torch.tensor([[0.0, 0.0, 8.0, 8.0]])  # k = floor(3 + log2(8/16)) = 2 -> stride 4
    large = torch.tensor([[4.0, 4.0, 40.0, 40.0]])  # k = floor(3 + log2(36/16)) = 4 -> stride 8
    out = pooler(features, [torch.cat([large, small])])
    torch.testing.assert_close(out[0], roi_align(features[1], [large], 2, 1 / 8, 2, True)[0])
    torch.testing.assert_close(out[1], roi_align(features[0], [small], 2, 1 / 4, 2, True)[0])


# -- Fast R-CNN and RoI max pooling ----------------------------------------------------------


def test_fast_rcnn_head_on_given_proposals():
    model = small_model(pool="max")
    images = torch.rand(2, 3, 48, 48)
    proposals = [torch.tensor([[2.0, 2.0, 20.0, 30.0], [10.0, 10.0, 40.0, 40.0]]),
                 torch.tensor([[0.0, 0.0, 48.0, 48.0]])]
    losses = model.detect_from_proposals(images, proposals, two_targets())
    assert set(losses) == {"roi_class", "roi_box", "loss"}
    losses["loss"].backward()
    assert all(p.grad is None for p in model.rpn.parameters())  # the RPN was not run
    assert model.roi_heads.predictor.cls_score.weight.grad is not None
    model.eval()
    model.score_threshold = 0.0
    with torch.no_grad():
        dets = model.detect_from_proposals(images, proposals)
    assert len(dets) == 2
    # at most one box per proposal and class: 2 proposals x 3 classes, then 1 x 3
    assert dets[0]["boxes"].shape[0] <= 6 and dets[1]["boxes"].shape[0] <= 3
