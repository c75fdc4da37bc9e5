"""``rlgen sample dcgan|vae|autoencoder``: image grids, latent interpolation strips, or one
file per image from any generative checkpoint.

    rlgen sample vae --checkpoint RUN_DIR --num 64 --seed 0 --out grid.png
    rlgen sample vae --checkpoint RUN_DIR --interpolate --steps 10 --num 50 --out strips.png
    rlgen sample dcgan --checkpoint ckpt.pt --num 1000 --out samples/ --format png

Latents are drawn on the CPU from ``--seed`` (``GenerativeModel.prior_latents``), so a seed
gives the same images on any device and for any ``--batch-size``. Interpolation strips follow
the great circle between two prior draws (slerp, White 2016).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rlgen.errors import InputError


@dataclass
class SampleConfig:
    """Sample images from a generative checkpoint (grid, interpolation strips or files)."""

    checkpoint: str = ""
    """checkpoint file (or run directory: its latest checkpoint)"""
    num: int = 64
    """number of images (with --interpolate: total images, --steps per strip)"""
    seed: int = 0
    """seed of the latent draws (the same seed gives the same images on any device)"""
    out: str = "samples.png"
    """output image file for a grid, or a directory with --format"""
    format: Literal["grid", "png", "jpg"] = "grid"
    """grid: one image file at --out; png / jpg: one file per image in directory --out"""
    interpolate: bool = False
    """latent interpolation strips (slerp between two prior draws per row)"""
    steps: int = 8
    """images per interpolation strip"""
    nrow: int | None = None
    """images per grid row (None: 8, or --steps with --interpolate)"""
    batch_size: int = 256
    """latents decoded at once (memory), does not change the images"""
    device: str = "auto"
    """cpu, cuda, mps or auto"""

    def __post_init__(self) -> None:
        if not self.checkpoint:
            raise InputError("--checkpoint is required (a checkpoint file or run directory)")
        if self.num < 1:
            raise InputError(f"--num must be >= 1, got {self.num}")
        if self.steps < 2:
            raise InputError(f"--steps must be >= 2, got {self.steps}")
        if self.nrow is not None and self.nrow < 1:
            raise InputError(f"--nrow must be >= 1 (or omitted), got {self.nrow}")
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.format not in ("grid", "png", "jpg"):
            raise InputError(f"--format must be grid, png or jpg, got {self.format!r}")
        if not self.out:
            raise InputError("--out must name an output file or directory")


def sample_command(config: SampleConfig, kind: str | None = None) -> dict[str, Any]:
    """Run ``rlgen sample KIND``; returns ``{"images": Tensor, "paths": [...], ...}``.

    ``kind`` (set by each trainer's spec) must match the checkpoint's model kind.
    """
    from rlgen.data.images import save_image
    from rlgen.generative.model import load_generative
    from rlgen.runtime import resolve_device

    device = resolve_device(config.device)
    model = load_generative(config.checkpoint, device=device)
    if kind is not None and model.kind != kind:
        raise InputError(
            f"{config.checkpoint} holds a {model.kind!r} model; use `rlgen sample {model.kind}`"
        )
    if config.interpolate:
        rows = max(1, config.num // config.steps)
        images = model.interpolate(steps=config.steps, seed=config.seed, rows=rows,
                                   device=device)
        nrow = config.nrow or config.steps
    else:
        images = model.sample(config.num, seed=config.seed, batch_size=config.batch_size,
                              device=device)
        nrow = config.nrow or 8

    out = Path(config.out)
    if config.format == "grid":
        if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff"):
            raise InputError(f"--out {out} must be an image file (.png, .jpg) for a grid; "
                             f"use --format png to write one file per image into a directory")
        paths = [save_image(images, out, nrow=nrow)]
    else:
        out.mkdir(parents=True, exist_ok=True)
        width = max(5, len(str(len(images) - 1)))
        paths = [save_image(img, out / f"{i:0{width}d}.{config.format}")
                 for i, img in enumerate(images)]
    where = paths[0] if len(paths) == 1 else f"{len(paths)} files in {out}"
    print(f"wrote {len(images)} {model.kind} {'interpolation ' if config.interpolate else ''}"
          f"images ({tuple(images.shape[1:])}) to {where}")
    return {"images": images, "paths": [str(p) for p in paths], "kind": model.kind}

