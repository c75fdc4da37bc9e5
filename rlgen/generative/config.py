"""What the generative trainers and their evaluations share besides the model: the config base
(``TrainConfig`` + the dataset fields) and the data it names.

Training length is counted in epochs (``--epochs``, as pytorch/examples does); ``--max-steps``
stops earlier. One step is one optimizer update on one global batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from rlgen.training import TrainConfig, TrainingRun, check


@dataclass
class GenerativeTrainConfig(TrainConfig):
    """Fields every generative trainer shares (data, optimizer, loader, normalisation)."""

    fixed_on_resume: ClassVar[tuple[str, ...]] = (
        *TrainConfig.fixed_on_resume, "dataset", "image_size", "batch_norm")

    dataset: str = "mnist"
    """dataset name (mnist, fashion-mnist, cifar10, folder, mnist-subset, shapes)"""
    data_root: str = "data"
    """directory holding the dataset files (for `folder`: the image folder)"""
    download: bool = False
    """download the dataset if it is missing"""
    image_size: int | None = None
    """resize images to this square size (None: the dataset's native size)"""
    learning_rate: float = 1e-3
    """Adam learning rate"""
    loader: Literal["tensor", "dataloader"] = "tensor"
    """tensor: batches indexed from the in-memory uint8 split; dataloader: torch DataLoader"""
    batch_norm: bool = True
    """batch norm in rlgen's own networks (conv encoder and decoder, DCGAN generator and
    discriminator); --no-batch-norm makes each example independent of its batch, so a torchrun
    job on CPUs matches a one-process run exactly"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.learning_rate > 0 and math.isfinite(self.learning_rate),
              f"--learning-rate must be a finite number > 0, got {self.learning_rate}")
        check(self.image_size is None or self.image_size >= 8,
              f"--image-size must be >= 8 (or omitted for the native size), got "
              f"{self.image_size}")
        check(self.loader in ("tensor", "dataloader"),
              f"--loader must be tensor or dataloader, got {self.loader!r}")
        check(bool(self.dataset), "--dataset must name a dataset, got an empty string")


def load_split(config: Any, train: bool = True):
    """The split of the dataset ``config`` names (an ``rlgen.data`` dataset, ``.images`` uint8)."""
    from rlgen.data import load_dataset

    return load_dataset(config.dataset, root=config.data_root, train=train,
                        download=getattr(config, "download", False),
                        image_size=config.image_size)


def dataset_images(dataset) -> torch.Tensor:
    """The uint8 ``(N, C, H, W)`` images of a dataset (``.images`` or stacked items)."""
    images = getattr(dataset, "images", None)
    if images is None:  # a plain torch Dataset of (float image, label) pairs
        images = torch.stack([(dataset[i][0] * 255).round().to(torch.uint8)
                              for i in range(len(dataset))])
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(
            f"expected uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    return images


def make_batches(config: GenerativeTrainConfig, dataset, run: TrainingRun):
    """The run's batch order over ``dataset``: ``TensorBatches`` (``--loader tensor``) or
    ``LoaderBatches`` (``--loader dataloader``, ``--num-workers``); each yields
    ``(images in [0, 1], labels or None)``, this process's share of the global batch."""
    from rlgen.data.batches import LoaderBatches, TensorBatches

    if config.loader == "dataloader":
        return LoaderBatches(dataset, config.batch_size, num_workers=config.num_workers,
                             **run.shard_args())
    return TensorBatches(dataset_images(dataset), None, config.batch_size, **run.shard_args())


def load_for_evaluation(
    checkpoint: str | Path,
    kind: str,
    *,
    device: str | torch.device = "cpu",
    dataset: str | None = None,
    data_root: str | None = None,
    split: str = "test",
    num_images: int | None = None,
):
    """The model of a ``kind`` checkpoint and the images of a split (float in [0, 1], on
    ``device``) of the dataset it was trained on, unless ``dataset`` / ``data_root`` override.
    Returns ``(model, images, dataset_name)``; used by ``rlgen eval vae|autoencoder``."""
    from rlgen.checkpoint import load_checkpoint
    from rlgen.errors import InputError
    from rlgen.generative.model import load_generative
    from rlgen.runtime import resolve_device

    device = resolve_device(device)
    state = load_checkpoint(checkpoint)
    model = load_generative(state, device=device)
    if model.kind != kind:
        raise InputError(f"{checkpoint} holds a {model.kind!r} model, not a {kind!r} one; "
                         f"use `rlgen eval {model.kind}`")
    trained = state.get("config", {})
    data_config = GenerativeTrainConfig(
        dataset=dataset or trained.get("dataset", "mnist"),
        data_root=data_root or trained.get("data_root", "data"),
        image_size=trained.get("image_size"),
    )
    x = load_split(data_config, train=split == "train").images
    if num_images is not None:
        x = x[:num_images]
    x = x.to(device).float().div_(255.0)
    if tuple(x.shape[1:]) != tuple(model.image_shape):
        raise InputError(f"the data's images are {tuple(x.shape[1:])}, the model expects "
                         f"{tuple(model.image_shape)}; pass the dataset it was trained on")
    return model, x, data_config.dataset
