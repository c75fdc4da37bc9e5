"""Sample-quality metrics over any feature network: FID and Inception Score.

- Fréchet Inception Distance: Heusel, Ramsauer, Unterthiner, Nessler, Hochreiter, "GANs Trained
  by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium" (NeurIPS 2017). Gaussians
  are fitted to the features of real and of generated images and compared with the Fréchet
  (2-Wasserstein) distance ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2)``.
- Inception Score: Salimans, Goodfellow, Zaremba, Cheung, Radford, Chen, "Improved Techniques
  for Training GANs" (NeurIPS 2016): ``exp(E_x KL(p(y|x) || p(y)))`` over a classifier.

Published FIDs use the 2,048-d pool features of a particular TensorFlow InceptionV3. rlgen ships
no Inception weights (no torchvision, no download), so the feature network is a choice:

- ``"mnist"``: the penultimate layer of an MNIST classifier that rlgen trains itself on the
  training split of ``mnist-subset`` (a short fixed schedule, seeded), caches on disk under the
  cache directory (``--cache-dir``, ``$RLGEN_CACHE_DIR`` or ``~/.cache/rlgen``) keyed by its
  settings, and reports with its held-out accuracy. Such FIDs compare rlgen runs with each other,
  not with published Inception FIDs.
- a path to a TorchScript file (``torch.jit.load``; or a ``.pt2`` file written by
  ``torch.export.save``, TorchScript's successor): any module mapping images to features. It
  receives float32 ``(N, 3, 299, 299)`` images with values in ``[0, 1]`` (one-channel images are
  repeated to three channels, every image is resized bilinearly with antialiasing to 299x299;
  ``input_size`` changes that), and returns ``(N, D)`` features (``(N, D, 1, 1)`` and a one-element
  list/tuple are accepted too). This is how pytorch-fid's ``InceptionV3`` gives FIDs comparable
  to the literature: in an environment that has pytorch-fid, script a wrapper and save it::

      import torch
      from pytorch_fid.inception import InceptionV3

      class PoolFeatures(torch.nn.Module):
          def __init__(self):
              super().__init__()
              # resize_input resizes to 299 itself; normalize_input maps [0, 1] to [-1, 1]
              self.net = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]])

          def forward(self, x: torch.Tensor) -> torch.Tensor:
              return self.net(x)[0].flatten(1)

      torch.jit.trace(PoolFeatures().eval(), torch.rand(2, 3, 299, 299)).save("inception.pt")

  then ``rlgen eval dcgan --checkpoint RUN --metric fid --feature-net inception.pt``.

The matrix square root is computed without scipy: ``tr((S1^1/2 S2 S1^1/2)^1/2)`` equals the sum of
the square roots of the eigenvalues of the symmetric positive semi-definite matrix
``S1^1/2 S2 S1^1/2``, found with ``torch.linalg.eigh`` in float64.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rlgen.errors import InputError

ArrayLike = torch.Tensor | np.ndarray
ImageSource = torch.Tensor | Iterable[torch.Tensor]

# --------------------------------------------------------------------------------------------
# The Fréchet distance between two Gaussians
# --------------------------------------------------------------------------------------------


def _as_float64(x: ArrayLike, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor or numpy array, got {type(x).__name__}")
    return x.detach().to("cpu", torch.float64)


def sqrtm_psd(matrix: ArrayLike) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix by eigen-decomposition.

    Tiny negative eigenvalues from round-off are clamped to zero.
    """
    m = _as_float64(matrix, "matrix")
    m = (m + m.T) / 2
    eigenvalues, eigenvectors = torch.linalg.eigh(m)
    return (eigenvectors * eigenvalues.clamp_min(0).sqrt()) @ eigenvectors.T


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), computed in float64."""
    mu1, mu2 = _as_float64(mu1, "mu1"), _as_float64(mu2, "mu2")
    sigma1, sigma2 = _as_float64(sigma1, "sigma1"), _as_float64(sigma2, "sigma2")
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,):
        raise ValueError(
            f"mu1 and mu2 must be vectors of the same length, got {tuple(mu1.shape)} and "
            f"{tuple(mu2.shape)}"
        )
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"sigma1 and sigma2 must be ({d}, {d}) covariance matrices, got "
            f"{tuple(sigma1.shape)} and {tuple(sigma2.shape)}"
        )
    root1 = sqrtm_psd(sigma1)
    product = root1 @ sigma2 @ root1
    # The product is symmetric PSD in exact arithmetic; eigh needs it exactly symmetric.
    eigenvalues = torch.linalg.eigvalsh((product + product.T) / 2)
    trace_sqrt = eigenvalues.clamp_min(0).sqrt().sum()
    diff = mu1 - mu2
    value = diff.dot(diff) + torch.trace(sigma1) + torch.trace(sigma2) - 2 * trace_sqrt
    # Round-off can leave a tiny negative number for identical distributions.
    return max(float(value), 0.0)


# --------------------------------------------------------------------------------------------
# Feature statistics of image sets
# --------------------------------------------------------------------------------------------


def _batches(images: ImageSource, batch_size: int) -> Iterator[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        if images.dim() != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
        for start in range(0, images.shape[0], batch_size):
            yield images[start : start + batch_size]
    else:
        yield from images


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1]; float images are clamped to [0, 1]."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float().clamp(0, 1)


def feature_statistics(
    feature_fn: Callable[[torch.Tensor], torch.Tensor],
    images: ImageSource,
    batch_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(D,)`` and covariance ``(D, D)`` (float64, unbiased) of ``feature_fn`` over images.

    ``images`` is one ``(N, C, H, W)`` tensor (uint8, or float in [0, 1]) or an iterable of such
    batches. Sums are accumulated in float64, so no feature matrix of all images is kept.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    total, outer, count = None, None, 0
    with torch.inference_mode():
        for batch in _batches(images, batch_size):
            feats = feature_fn(to_unit_float(batch))
            if feats.dim() != 2:
                feats = feats.flatten(1)
            feats = feats.to("cpu", torch.float64)
            if total is None:
                total = feats.sum(0)
                outer = feats.T @ feats
            else:
                total += feats.sum(0)
                outer += feats.T @ feats
            count += feats.shape[0]
    if count < 2:
        raise ValueError(f"feature statistics need at least 2 images, got {count}")
    mu = total / count
    sigma = (outer - count * torch.outer(mu, mu)) / (count - 1)
    return mu, (sigma + sigma.T) / 2


def generated_batches(
    generator: Any, num_samples: int, batch_size: int = 256
) -> Iterator[torch.Tensor]:
    """Batches of images in [0, 1] from a model with ``sample(n)`` or a callable ``fn(n)``."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    draw = generator.sample if hasattr(generator, "sample") else generator
    if not callable(draw):
        raise TypeError(
            "expected images (a tensor), a model with .sample(n) or a callable n -> images, got "
            f"{type(generator).__name__}"
        )
    done = 0
    while done < num_samples:
        n = min(batch_size, num_samples - done)
        with torch.inference_mode():
            images = draw(n)
        yield images  # outside the context: inference mode must not leak into the caller
        done += n


def fid(
    generator_or_images: Any,
    real_images: ImageSource | tuple[torch.Tensor, torch.Tensor],
    feature_net: Callable[[torch.Tensor], torch.Tensor],
    *,
    num_samples: int | None = None,
    batch_size: int = 256,
) -> float:
    """FID between generated images and real ones, in ``feature_net``'s feature space.

    ``generator_or_images``: a ``(N, C, H, W)`` tensor (uint8 or float in [0, 1]), a model with
    ``sample(n)`` returning images in [0, 1], or a callable ``n -> images``. ``num_samples``
    (default: as many as the real images, else 10,000) are drawn from a generator.
    ``real_images``: images like the above, or precomputed ``(mu, sigma)``.
    """
    if isinstance(real_images, tuple) and len(real_images) == 2:
        mu_real, sigma_real = real_images
    else:
        mu_real, sigma_real = feature_statistics(feature_net, real_images, batch_size)
    if isinstance(generator_or_images, torch.Tensor):
        fake: ImageSource = generator_or_images
    else:
        if num_samples is None:
            num_samples = real_images.shape[0] if isinstance(real_images, torch.Tensor) else 10_000
        fake = generated_batches(generator_or_images, num_samples, batch_size)
    mu_fake, sigma_fake = feature_statistics(feature_net, fake, batch_size)
    return frechet_distance(mu_fake, sigma_fake, mu_real, sigma_real)


def inception_score(
    generator_or_images: Any,
    classify: Callable[[torch.Tensor], torch.Tensor],
    *,
    num_samples: int = 10_000,
    splits: int = 10,
    batch_size: int = 256,
) -> tuple[float, float]:
    """Inception Score (mean, std over ``splits``) with any classifier returning logits.

    ``classify`` maps float images in [0, 1] to class logits, e.g. ``FeatureNet.logits`` of the
    MNIST feature classifier. 1 is the minimum (every image the same class distribution); the
    maximum is the number of classes (confident predictions, all classes equally often).
    """
    if isinstance(generator_or_images, torch.Tensor):
        batches: ImageSource = generator_or_images
    else:
        batches = generated_batches(generator_or_images, num_samples, batch_size)
    probs = []
    with torch.inference_mode():
        for batch in _batches(batches, batch_size):
            probs.append(F.softmax(classify(to_unit_float(batch)).double().cpu(), dim=1))
    p_yx = torch.cat(probs)
    if p_yx.shape[0] < splits:
        raise ValueError(f"need at least splits={splits} images, got {p_yx.shape[0]}")
    scores = []
    for part in torch.tensor_split(p_yx, splits):
        p_y = part.mean(0, keepdim=True)
        kl = (part * (part.clamp_min(1e-12).log() - p_y.clamp_min(1e-12).log())).sum(1)
        scores.append(math.exp(float(kl.mean())))
    t = torch.tensor(scores, dtype=torch.float64)
    return float(t.mean()), float(t.std(unbiased=False)) if len(scores) > 1 else 0.0


# --------------------------------------------------------------------------------------------
# Feature networks
# --------------------------------------------------------------------------------------------


class FeatureNet(nn.Module):
    """Images float ``(N, C, H, W)`` in [0, 1] -> features ``(N, D)``.

    ``prepare`` adapts any image set to what the network was built for: 3 -> 1 channels by
    averaging, 1 -> 3 by repetition, and a bilinear, antialiased resize to ``input_size``.
    ``info`` describes the network (name, settings, held-out accuracy) for reports.
    """

    in_channels: int = 3
    input_size: tuple[int, int] | None = None

    def __init__(self) -> None:
        super().__init__()
        self.info: dict[str, Any] = {}

    @property
    def device(self) -> torch.device:
        p = next(self.parameters(), None)
        if p is None:
            p = next(self.buffers(), None)
        return p.device if p is not None else torch.device("cpu")

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        x = to_unit_float(images).to(self.device)
        if x.dim() != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(x.shape)}")
        c = x.shape[1]
        if c != self.in_channels:
            if self.in_channels == 1 and c == 3:
                x = x.mean(1, keepdim=True)
            elif self.in_channels == 3 and c == 1:
                x = x.expand(-1, 3, -1, -1)
            else:
                raise ValueError(
                    f"feature network {self.info.get('name', type(self).__name__)!r} takes "
                    f"{self.in_channels}-channel images, got {c} channels"
                )
        if self.input_size is not None and tuple(x.shape[-2:]) != tuple(self.input_size):
            x = F.interpolate(
                x, size=self.input_size, mode="bilinear", align_corners=False, antialias=True
            )
        return x

    def features(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)


class ClassifierFeatureNet(FeatureNet):
    """The penultimate layer of a classifier: the input of its last ``nn.Linear``.

    Works for any rlgen classifier (backbone + head, see ``create_model``); ``logits`` gives the
    class scores for the Inception Score. Inputs are standardized with the training set's
    ``mean`` / ``std`` inside, so callers pass images in [0, 1].
    """

    def __init__(
        self,
        classifier: nn.Module,
        *,
        in_channels: int,
        input_size: tuple[int, int],
        mean: float = 0.0,
        std: float = 1.0,
        info: dict[str, Any] | None = None,
    ):
        super().__init__()
        linears = [m for m in classifier.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError("a classifier feature network needs an nn.Linear output layer")
        self.classifier = classifier.eval().requires_grad_(False)
        self.in_channels = in_channels
        self.input_size = tuple(input_size)
        self.mean, self.std = float(mean), float(std)
        self.info = dict(info or {})
        self._captured: torch.Tensor | None = None
        linears[-1].register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: Any) -> None:
        self._captured = inputs[0]

    def _run(self, images: torch.Tensor) -> torch.Tensor:
        x = (self.prepare(images) - self.mean) / self.std
        return self.classifier(x)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        self._run(images)
        feats, self._captured = self._captured, None
        return feats.flatten(1).float()

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self._run(images).float()


class TorchScriptFeatureNet(FeatureNet):
    """A TorchScript file (``torch.jit.load``), or a ``torch.export`` program saved as ``.pt2``,
    mapping float (N, 3, H, W) in [0, 1] to features (N, D).

    See the module docstring for the expected input and how to script pytorch-fid's InceptionV3.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        input_size: tuple[int, int] | None = (299, 299),
        in_channels: int = 3,
        device: str | torch.device = "cpu",
    ):
        super().__init__()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"--feature-net {path}: no such TorchScript / .pt2 file")
        try:
            if path.suffix == ".pt2":  # torch.export.save(torch.export.export(...), path)
                self.net = torch.export.load(str(path)).module().to(device)
            else:
                with warnings.catch_warnings():  # the user chose TorchScript; keep the log clean
                    warnings.simplefilter("ignore", DeprecationWarning)
                    self.net = torch.jit.load(str(path), map_location=device).eval()
        except (RuntimeError, ValueError, OSError) as exc:
            raise InputError(
                f"--feature-net {path} is not a TorchScript file (torch.jit.trace(...).save(path)) "
                f"or an exported program (.pt2, torch.export.save): {str(exc).splitlines()[0]}"
            ) from exc
        self.in_channels = in_channels
        self.input_size = tuple(input_size) if input_size is not None else None
        self._device = torch.device(device)
        self.info = {"name": "torchscript", "path": str(path)}

    @property
    def device(self) -> torch.device:
        return self._device

    def features(self, images: torch.Tensor) -> torch.Tensor:
        out = self.net(self.prepare(images))
        if isinstance(out, (list, tuple)):
            if len(out) != 1:
                raise InputError(
                    f"the TorchScript feature net returned {len(out)} outputs; it must return one "
                    "(N, D) tensor"
                )
            out = out[0]
        if out.dim() == 4 and out.shape[-2:] == (1, 1):
            out = out.flatten(1)
        if out.dim() != 2:
            raise InputError(
                f"the TorchScript feature net must return (N, D) features, got {tuple(out.shape)}"
            )
        return out.float()


# --------------------------------------------------------------------------------------------
# The MNIST classifier rlgen trains for its own FID
# --------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$RLGEN_CACHE_DIR``, else ``$XDG_CACHE_HOME/rlgen``, else ``~/.cache/rlgen``."""
    if os.environ.get("RLGEN_CACHE_DIR"):
        return Path(os.environ["RLGEN_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "rlgen"


@dataclass(frozen=True)
class ClassifierSettings:
    """Everything that decides the feature classifier; the cache file is keyed by it.
    ``procedure`` numbers the training procedure, so a changed procedure never reuses a file
    trained by an older one."""

    dataset: str = "mnist-subset"
    model: str = "mnist_conv2_relu"
    image_size: int = 28
    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0
    procedure: int = 2  # 2: trained by rlgen.vision.classification.train

    def key(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def filename(self) -> str:
        return f"fid_classifier_{self.dataset}_{self.model}_{self.image_size}px_{self.key()}.pt"


def train_feature_classifier(
    settings: ClassifierSettings = ClassifierSettings(),
    *,
    run_dir: str | Path,
    data_root: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Train ``settings.model`` on the training split of ``settings.dataset`` with the project's
    classification trainer (``rlgen.vision.classification.train``: seeded Adam, a fixed number
    of epochs, held-out accuracy at the end; its run goes to ``run_dir``); returns the cache
    entry: weights and what ``classifier_feature_net`` needs to use them."""
    from rlgen.checkpoint import load_checkpoint
    from rlgen.vision.classification import ClassifierConfig
    from rlgen.vision.classification import train as train_classifier

    config = ClassifierConfig(
        model=settings.model, dataset=settings.dataset, image_size=settings.image_size,
        epochs=settings.epochs, batch_size=settings.batch_size, learning_rate=settings.lr,
        seed=settings.seed, device=str(device), run_dir=str(run_dir), checkpoint_every=0,
        keep_checkpoints=1, val_fraction=0.0,  # the whole training split, as before
        **({"data_root": str(data_root)} if data_root is not None else {}),
    )
    result = train_classifier(config, progress=False)
    checkpoint = load_checkpoint(result["checkpoint"])
    meta = checkpoint["meta"]
    return {
        "kind": "fid_feature_classifier",
        "settings": asdict(settings),
        "model": checkpoint["state"]["model"],
        "num_classes": meta["num_classes"],
        "in_channels": meta["in_channels"],
        "mean": meta["mean"],
        "std": meta["std"],
        "heldout_accuracy": result["test/accuracy"],
        "num_heldout": int(result["test/num_images"]),
        "run_dir": result["run_dir"],
    }


def classifier_feature_net(
    settings: ClassifierSettings = ClassifierSettings(),
    *,
    cache_dir: str | Path | None = None,
    data_root: str | Path | None = None,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] | None = None,
) -> ClassifierFeatureNet:
    """The feature classifier for ``settings``: loaded from the cache, or trained and cached.

    ``net.info`` holds the settings, the cache path and the held-out accuracy.
    """
    from rlgen.checkpoint import load_checkpoint, save_checkpoint
    from rlgen.vision.backbones import create_model

    path = Path(cache_dir or default_cache_dir()) / settings.filename()
    if path.exists():
        state = load_checkpoint(path)
        cached = True
    else:
        if log is not None:
            log(
                f"training the FID feature classifier ({settings.model} on {settings.dataset}); "
                f"it is cached in {path}"
            )
        state = train_feature_classifier(settings, run_dir=path.with_suffix(".run"),
                                         data_root=data_root, device=device)
        save_checkpoint(state, path)
        cached = False
    model = create_model(
        settings.model, num_classes=state["num_classes"], in_channels=state["in_channels"]
    )
    model.load_state_dict(state["model"])
    info = {
        "name": f"classifier:{settings.dataset}:{settings.model}",
        "settings": state["settings"],
        "heldout_accuracy": state["heldout_accuracy"],
        "num_heldout": state["num_heldout"],
        "path": str(path),
        "cached": cached,
    }
    return ClassifierFeatureNet(
        model.to(device),
        in_channels=state["in_channels"],
        input_size=(settings.image_size, settings.image_size),
        mean=state["mean"],
        std=state["std"],
        info=info,
    )


def load_feature_net(
    spec: str,
    *,
    cache_dir: str | Path | None = None,
    data_root: str | Path | None = None,
    device: str | torch.device = "cpu",
    input_size: int = 299,
    settings: ClassifierSettings | None = None,
    log: Callable[[str], None] | None = None,
) -> FeatureNet:
    """``"mnist"`` -> the cached MNIST feature classifier (``settings``, default
    ``ClassifierSettings()``); a file path -> a TorchScript / exported net."""
    if spec == "mnist":
        return classifier_feature_net(
            settings or ClassifierSettings(), cache_dir=cache_dir, data_root=data_root,
            device=device, log=log,
        )  # fmt: skip
    path = Path(spec).expanduser()
    if path.suffix in (".pt", ".pth", ".ts", ".jit", ".pt2") or path.exists():
        return TorchScriptFeatureNet(path, input_size=(input_size, input_size), device=device)
    raise InputError(
        f"--feature-net must be 'mnist' (rlgen's own MNIST classifier) or the path of a "
        f"TorchScript file (.pt), got {spec!r}"
    )


# --------------------------------------------------------------------------------------------
# `rlgen eval <generative kind> --checkpoint ... --metric fid`
# --------------------------------------------------------------------------------------------


@dataclass
class GenerativeEvalConfig:
    """Score a generative checkpoint: FID against real images (and/or Inception Score)."""

    checkpoint: str = ""
    """checkpoint file or run directory (its latest checkpoint)"""
    metric: Literal["fid", "is", "fid+is"] = "fid"
    """fid (Frechet distance to real images), is (Inception Score) or both"""
    feature_net: str = "auto"
    """mnist (rlgen's own MNIST classifier), a TorchScript file, or auto (mnist for 1 channel)"""
    num_samples: int | None = None
    """generated images to score (None: as many as the real images, at most 10000)"""
    real_split: Literal["test", "train"] = "test"
    """real images: the held-out/test split or the training split of the run's dataset"""
    dataset: str | None = None
    """real dataset (None: the one the checkpoint was trained on)"""
    data_root: str | None = None
    """dataset directory (None: the one the checkpoint was trained with)"""
    cache_dir: str | None = None
    """where the feature classifier is cached (None: $RLGEN_CACHE_DIR or ~/.cache/rlgen)"""
    feature_input_size: int = 299
    """side of the images given to a TorchScript feature net (299 for InceptionV3)"""
    feature_epochs: int = ClassifierSettings.epochs
    """training epochs of the MNIST feature classifier (FIDs compare only at equal settings)"""
    batch_size: int = 250
    """images per forward pass"""
    device: str = "auto"
    """cpu, cuda, mps or auto"""
    seed: int = 0
    """seed of the generated samples"""

    def __post_init__(self) -> None:
        if not self.checkpoint:
            raise InputError("--checkpoint is required: a checkpoint file or a run directory")
        if self.num_samples is not None and self.num_samples < 2:
            raise InputError(f"--num-samples must be >= 2, got {self.num_samples}")
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.feature_epochs < 1:
            raise InputError(f"--feature-epochs must be >= 1, got {self.feature_epochs}")


def evaluate_checkpoint(config: GenerativeEvalConfig, print_result: bool = True) -> dict[str, Any]:
    """FID / IS of any rlgen generative checkpoint (dcgan, vae, autoencoder) in one process."""
    from rlgen.checkpoint import find_checkpoint, load_checkpoint
    from rlgen.data import load_dataset
    from rlgen.generative.model import load_generative
    from rlgen.runtime import resolve_device

    device = resolve_device(config.device)
    path = find_checkpoint(config.checkpoint)
    checkpoint = load_checkpoint(path)
    model = load_generative(checkpoint, device)
    train_config = checkpoint.get("config", {})
    dataset = config.dataset or train_config.get("dataset")
    if dataset is None:
        raise InputError(f"{path} does not say its dataset; pass --dataset")
    size = model.image_shape[1]
    kwargs: dict[str, Any] = {"train": config.real_split == "train", "image_size": size}
    root = config.data_root or train_config.get("data_root")
    if root is not None:
        kwargs["root"] = root
    real = load_dataset(dataset, **kwargs).images
    num_samples = config.num_samples or min(int(real.shape[0]), 10_000)

    spec = config.feature_net
    if spec == "auto":
        if model.image_shape[0] != 1:
            raise InputError(
                "rlgen has no feature network for colour images of its own: pass "
                "--feature-net PATH of a TorchScript InceptionV3 (see rlgen.generative.metrics)"
            )
        spec = "mnist"
    net = load_feature_net(
        spec, cache_dir=config.cache_dir, device=device, input_size=config.feature_input_size,
        settings=ClassifierSettings(epochs=config.feature_epochs),
        log=print if print_result else None,
    )  # fmt: skip

    def sampler() -> Callable[[int], torch.Tensor]:
        # A new seed per batch (sample(n, seed) restarts its noise at `seed`); the same
        # --seed gives the same images and so the same score.
        seeds = itertools.count(config.seed * 1_000_003)
        return lambda n: model.sample(n, seed=next(seeds), batch_size=config.batch_size,
                                      device=device)  # fmt: skip

    result: dict[str, Any] = {
        "checkpoint": str(path),
        "kind": model.kind,
        "num_samples": num_samples,
        "num_real": int(real.shape[0]),
        "feature_net": net.info.get("name", spec),
    }
    if "heldout_accuracy" in net.info:
        result["feature_net_heldout_accuracy"] = net.info["heldout_accuracy"]
        result["feature_net_settings"] = net.info["settings"]
    if config.metric in ("fid", "fid+is"):
        result["fid"] = fid(sampler(), real, net, num_samples=num_samples,
                            batch_size=config.batch_size)  # fmt: skip
    if config.metric in ("is", "fid+is"):
        if not isinstance(net, ClassifierFeatureNet):
            raise InputError("--metric is needs a classifier feature net (--feature-net mnist)")
        mean, std = inception_score(sampler(), net.logits, num_samples=num_samples,
                                    batch_size=config.batch_size)  # fmt: skip
        result["inception_score"], result["inception_score_std"] = mean, std
    if print_result:
        print(json.dumps(result))
    return result
