"""Nielsen's one-pixel-shift expansion of MNIST."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlgen.data import expand_with_shifts, shift_images


def test_four_shifted_copies_with_zero_fill():
    image = np.arange(1, 10, dtype=np.uint8).reshape(1, 3, 3)  # 1 2 3 / 4 5 6 / 7 8 9
    down, up, right, left = shift_images(image)
    np.testing.assert_array_equal(down, [[0, 0, 0], [1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(up, [[4, 5, 6], [7, 8, 9], [0, 0, 0]])
    np.testing.assert_array_equal(right, [[0, 1, 2], [0, 4, 5], [0, 7, 8]])
    np.testing.assert_array_equal(left, [[2, 3, 0], [5, 6, 0], [8, 9, 0]])
    assert image.tolist() == [[[1, 2, 3], [4, 5, 6], [7, 8, 9]]]  # input untouched


def test_torch_batches_with_channels_and_larger_shifts():
    images = torch.rand(5, 3, 8, 8)
    out = shift_images(images, pixels=2)
    assert isinstance(out, torch.Tensor) and out.shape == (20, 3, 8, 8)
    assert torch.equal(out[:5, :, 2:], images[:, :, :-2])  # block 0: down by 2
    assert torch.equal(out[15:, :, :, :-2], images[:, :, :, 2:])  # block 3: left by 2
    assert (out[15:, :, :, -2:] == 0).all()


def test_expand_with_shifts_keeps_labels_aligned():
    images = torch.arange(2 * 4 * 4, dtype=torch.uint8).reshape(2, 1, 4, 4)
    labels = torch.tensor([3, 7])
    big, big_labels = expand_with_shifts(images, labels)
    assert big.shape == (10, 1, 4, 4) and big_labels.tolist() == [3, 7] * 5
    assert torch.equal(big[:2], images)
    nbig, nlabels = expand_with_shifts(images.numpy(), labels.numpy())
    np.testing.assert_array_equal(nbig, big.numpy())
    np.testing.assert_array_equal(nlabels, big_labels.numpy())


def test_bad_arguments():
    with pytest.raises(ValueError, match="pixels"):
        shift_images(np.zeros((1, 3, 3)), pixels=3)
    with pytest.raises(ValueError, match="batch"):
        shift_images(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="2 images but 1 labels"):
        expand_with_shifts(np.zeros((2, 3, 3)), np.zeros(1))
