"""The box pictures: outlines where the boxes are, in their class's colour, a label tag above
each, dashed truth, distinct class colours, panels of predictions beside the truth."""

import pytest
import torch

from rlgen.vision.pictures import class_colours, detection_panels, draw_boxes


def test_class_colours_are_distinct():
    colours = class_colours(20)
    assert colours.shape == (20, 3) and colours.dtype == torch.uint8
    assert len({tuple(c) for c in colours.tolist()}) == 20


def test_boxes_are_outlined_in_their_class_colour_with_a_tag():
    image = torch.zeros(3, 40, 50, dtype=torch.uint8)
    colours = class_colours(3)
    picture = draw_boxes(image, torch.tensor([[10.0, 20, 30, 35]]), torch.tensor([2]),
                         torch.tensor([0.87]), ["a", "b", "c"], scale=2, width=1)
    assert picture.shape == (3, 80, 100)
    colour = colours[2][:, None]
    left = picture[:, 40:70, 20]  # the left edge at x = 10 * 2, below the tag
    assert (left == colour).all()
    assert (picture[:, 50:60, 40] == 0).all()  # inside the box: the image, untouched
    tag = picture[:, 27:40, 20:30]  # the label tag above the top-left corner
    assert (tag == colour[:, :, None]).float().mean() > 0.3
    dashed = draw_boxes(image, torch.tensor([[10.0, 20, 30, 35]]), torch.tensor([2]),
                        scale=2, width=1, dashed=True)
    edge = (dashed[:, 40:70, 20] == colour).all(0)
    assert 0.3 < edge.float().mean() < 0.8  # dashes and gaps
    with pytest.raises(ValueError, match="must match"):
        draw_boxes(image, torch.zeros(2, 4), torch.tensor([1]))


def test_panels_put_predictions_beside_the_truth():
    images = torch.rand(2, 3, 16, 16)
    predictions = [{"boxes": torch.tensor([[1.0, 1, 8, 8]]), "scores": torch.tensor([0.9]),
                    "labels": torch.tensor([0])}] * 2
    truths = [{"boxes": torch.tensor([[2.0, 2, 9, 9]]), "labels": torch.tensor([1])}] * 2
    sheet = detection_panels(images, predictions, truths, ["x", "y"], min_side=64)
    assert sheet.shape == (3, 2 * 64 + 4, 2 * 64 + 4)
