"""The segmentation pictures: colour masks, the overlay with its legend (``rlgen predict
segmentation``) and the image | truth | prediction triplets (TensorBoard), checked pixel by
pixel."""

from __future__ import annotations

import torch

from rlgen.vision.pictures import colorize, overlay, segmentation_triplets

PALETTE = torch.tensor([[0, 0, 0], [200, 0, 0], [0, 150, 0], [0, 0, 250]], dtype=torch.uint8)


def test_colorize_uses_the_palette_white_for_ignored_and_black_outside():
    mask = torch.tensor([[0, 1, 2], [3, 255, 9]])
    picture = colorize(mask, PALETTE)
    assert picture.dtype == torch.uint8 and picture.shape == (3, 2, 3)
    assert picture[:, 0, 1].tolist() == [200, 0, 0] and picture[:, 1, 0].tolist() == [0, 0, 250]
    assert picture[:, 1, 1].tolist() == [255, 255, 255]  # ignore index: no class
    assert picture[:, 1, 2].tolist() == [0, 0, 0]  # 9 is no class of a 4-colour palette
    no_ignore = colorize(mask, PALETTE, ignore_index=None)
    assert no_ignore[:, 1, 1].tolist() == [0, 0, 0]


def test_overlay_blends_the_colours_keeps_ignored_pixels_and_adds_a_legend():
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8)
    mask = torch.zeros(20, 30, dtype=torch.long)
    mask[5:10, 5:15] = 2
    mask[0, 0] = 255
    plain = overlay(image, mask, PALETTE, alpha=0.25)
    assert plain.shape == (3, 20, 30)
    expected = (0.75 * image.float() + 0.25 * colorize(mask, PALETTE).float()).round()
    expected[:, 0, 0] = image[:, 0, 0].float()  # ignored: the image as it is
    assert torch.equal(plain, expected.to(torch.uint8))

    classes = ["background", "red", "green", "blue"]
    with_legend = overlay(image, mask, PALETTE, classes, alpha=0.25)
    # two rows of 16 pixels (background and green present) + 4; swatch and name beside
    assert with_legend.shape[1] == 2 * 16 + 4 and with_legend.shape[2] > 30 + 4 + 16
    assert torch.equal(with_legend[:, :20, :30], plain)
    assert (with_legend[:, 20:, :30] == 255).all()  # white under the image
    legend = with_legend[:, :, 34:]  # after the 4-pixel gap
    colours = {tuple(c) for c in legend.permute(1, 2, 0).reshape(-1, 3).tolist()}
    assert (0, 150, 0) in colours  # a swatch of the class present
    assert (200, 0, 0) not in colours and (0, 0, 250) not in colours  # absent: not listed


def test_triplets_put_image_truth_and_prediction_side_by_side_one_row_each():
    torch.manual_seed(0)
    images = torch.rand(2, 1, 8, 12)  # grey, float in [0, 1]
    truths = torch.randint(0, 4, (2, 8, 12))
    predictions = torch.randint(0, 4, (2, 8, 12))
    truths[1, 0, 0] = 255
    sheet = segmentation_triplets(images, truths, predictions, PALETTE)
    assert sheet.dtype == torch.uint8 and sheet.shape == (3, 2 * 8 + 4, 3 * 12 + 2 * 4)
    for row, top in enumerate((0, 12)):
        panel = sheet[:, top:top + 8]
        grey = (images[row].clamp(0, 1) * 255).round().to(torch.uint8).expand(3, -1, -1)
        assert torch.equal(panel[:, :, :12], grey)
        assert torch.equal(panel[:, :, 16:28], colorize(truths[row], PALETTE))
        assert torch.equal(panel[:, :, 32:44], colorize(predictions[row], PALETTE))
    assert (sheet[:, 8:12] == 255).all()  # the white gap between rows


def test_triplets_scale_enlarges_every_pixel_to_a_block():
    images = torch.rand(1, 3, 4, 5)
    truths, predictions = torch.randint(0, 4, (2, 1, 4, 5))
    once = segmentation_triplets(images, truths, predictions, PALETTE)
    thrice = segmentation_triplets(images, truths, predictions, PALETTE, scale=3)
    assert thrice.shape == (3, 3 * 4, 3 * 3 * 5 + 2 * 4)
    for k in range(3):  # panel k starts at k * (5 + 4) once, k * (15 + 4) enlarged
        small = once[:, :, k * 9:k * 9 + 5]
        big = thrice[:, :, k * 19:k * 19 + 15]
        assert torch.equal(big, small.repeat_interleave(3, 1).repeat_interleave(3, 2))
