"""The seeded, resumable batch order: epochs reshuffled, resume mid-epoch, the same batches
through a DataLoader, targets carried along, the global batch split over processes, and
seeded on-device transforms."""

from __future__ import annotations

import pytest
import torch

from rlgen.data.base import ImageDataset
from rlgen.data.batches import LoaderBatches, TensorBatches


def _images(n=50):
    """uint8 images whose pixels hold their own index (recoverable from a float batch)."""
    return torch.arange(n, dtype=torch.uint8).reshape(n, 1, 1, 1).expand(n, 1, 2, 2).clone()


def _ids(x):
    return (x[:, 0, 0, 0] * 255).round().long().tolist()


def _take(stream, k):
    return [next(stream) for _ in range(k)]


def test_epochs_are_reshuffled_and_resume_is_exact():
    data = TensorBatches(_images(50), None, batch_size=16, seed=3)
    assert data.steps_per_epoch == 3  # the incomplete last batch is dropped
    run = [_ids(x) for x, _ in _take(data.batches(0), 9)]
    epoch0 = sum(run[:3], [])
    assert len(set(epoch0)) == 48 and run[0] != run[3]  # distinct images, reshuffled
    resumed = data.batches(4)  # from the middle of epoch 1
    assert [_ids(x) for x, _ in _take(resumed, 5)] == run[4:]
    again = TensorBatches(_images(50), None, batch_size=16, seed=3).batches(0)
    assert _ids(next(again)[0]) == run[0]
    other_seed = TensorBatches(_images(50), None, batch_size=16, seed=4).batches(0)
    assert _ids(next(other_seed)[0]) != run[0]


def test_uint8_inputs_become_unit_floats_and_targets_follow_their_inputs():
    x, y = next(TensorBatches(torch.full((4, 1, 2, 2), 255, dtype=torch.uint8), None, 2)
                .batches())
    assert x.dtype == torch.float32 and x.max().item() == 1.0 and y is None
    labels = torch.arange(50) * 10
    for x, y in _take(TensorBatches(_images(50), labels, 8, seed=1).batches(0), 12):
        assert (torch.tensor(_ids(x)) * 10).tolist() == y.tolist()


def test_a_split_smaller_than_a_batch_is_one_batch_and_empty_splits_are_refused():
    data = TensorBatches(_images(5), None, batch_size=64)
    assert data.batch_size == 5 and data.steps_per_epoch == 1
    with pytest.raises(ValueError, match="empty"):
        TensorBatches(_images(0), None, 4)
    with pytest.raises(ValueError, match="5 inputs but 4 targets"):
        TensorBatches(_images(5), torch.zeros(4), 2)


def test_dataloader_batches_match_tensor_batches():
    labels = torch.arange(40) % 7
    dataset = ImageDataset(_images(40), labels)
    tensor = TensorBatches(dataset.images, labels, 8, seed=1).batches(3)
    loader = LoaderBatches(dataset, 8, seed=1).batches(3)
    for (xt, yt), (xl, yl) in zip(_take(tensor, 7), _take(loader, 7)):
        assert torch.equal(xt, xl) and torch.equal(yt, yl)


@pytest.mark.parametrize("loader", ["tensor", "dataloader"])
def test_the_global_batch_is_split_over_processes(loader):
    """Rank r takes the r-th block of the same rows, so all ranks together see the one-process
    batch at every step, whatever the world size."""
    labels = torch.arange(60)
    dataset = ImageDataset(_images(60), labels)

    def stream(rank, world):
        if loader == "tensor":
            return TensorBatches(dataset.images, labels, 12, seed=5, rank=rank,
                                 world_size=world).batches(2)
        return LoaderBatches(dataset, 12, seed=5, rank=rank, world_size=world).batches(2)

    single = _take(stream(0, 1), 8)
    for world in (2, 3, 4):
        ranks = [_take(stream(r, world), 8) for r in range(world)]
        for step, (x, y) in enumerate(single):
            parts = [ranks[r][step] for r in range(world)]
            assert all(p[0].shape[0] == 12 // world for p in parts)
            assert torch.equal(torch.cat([p[0] for p in parts]), x)
            assert torch.equal(torch.cat([p[1] for p in parts]), y)
    with pytest.raises(ValueError, match="--batch-size 12 .* divisible by the number of "
                                         "processes, 5"):
        TensorBatches(dataset.images, None, 12, rank=0, world_size=5)


def test_transforms_run_on_each_batch_with_a_generator_seeded_by_step():
    seen = []

    def jitter(x, y, generator):
        noise = torch.rand(x.shape, generator=generator, device=x.device)
        seen.append(noise[0, 0, 0, 0].item())
        return x + noise, y

    data = TensorBatches(_images(40), None, 8, seed=2, transform=jitter)
    first = [x for x, _ in _take(data.batches(0), 6)]
    resumed = [x for x, _ in _take(data.batches(3), 3)]
    for a, b in zip(first[3:], resumed):
        assert torch.equal(a, b)  # the same augmentation after a resume
    assert len(set(seen[:6])) == 6  # a different draw at every step


def test_the_dataloader_path_leaves_the_global_rng_alone():
    """A DataLoader draws its workers' base seed from the global RNG unless given a generator;
    that would shift every later draw of a run (noise, latents) and break exact resume."""
    dataset = ImageDataset(_images(40), torch.zeros(40, dtype=torch.long))
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    _take(LoaderBatches(dataset, 8, seed=1).batches(3), 6)  # crosses into a new epoch
    assert torch.equal(torch.rand(3), expected)
