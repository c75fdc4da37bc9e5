"""Transfer learning on digits: does a network pretrained on 0-4 help to learn 5-9 from 250 images?

1. Two datasets of our own, registered by name in ``rlgen.registry.DATASETS`` (this is all a
   plug-in dataset takes: a builder with the common signature that returns an ``ImageDataset``):

   - ``digits-0-4``: the digits 0-4 of the ``mnist-subset`` (2,000 training, 500 held-out);
   - ``digits-5-9-50``: 50 training digits of each class 5-9 (250 images, one seeded choice,
     ``SUBSET_SEED``), relabelled 0-4 with class names "5".."9"; its test split is every
     held-out digit 5-9 (500 images).

2. Pretrain ``mnist_conv2_relu`` (Nielsen's two conv-pool layers + fc100) on ``digits-0-4``.
3. On ``digits-5-9-50``, with the same optimiser and epochs each time, train
   (a) ``scratch``: random initialisation;
   (b) ``frozen``: the pretrained weights with a new 5-class output layer, ``freeze="backbone"``
       (the convolutions stay fixed; fc100 and the output layer train);
   (c) ``finetune``: the same start, everything trains (``freeze="none"``).

Every run on 5-9 trains on all 250 images for ``--epochs`` and is tested with its last weights
on all 500 held-out digits 5-9. (A validation split of the 250 cannot pick the best epoch:
with ``--val-fraction 0.2`` its 50 images read 92-100% and chose epochs 1 to 12 of 30, and one
fine-tuning run kept its first epoch's weights, 85% on the test digits against 93% for the
others.) The pretraining keeps 10% of its 2,000 images to choose its best epoch, whose weights
(``best.pt``) the transfer starts from. Seeds vary the initialisation (of the new head too) and
the batch order; the 250 images and the pretrained network are the same for every seed.

A new head: ``weights=`` replaces the checkpoint's head only when the class counts differ. Here
both tasks have 5 classes, so the 0-4 output layer would be kept silently; we save the
pretrained weights with a freshly initialised output layer (``reset_classifier``) and start from
that file instead.

One JSON line per run (stdout), then a markdown table (mean ± std over the seeds, min-max).

    python examples/transfer_digits.py              # 3 seeds, under a minute on 2 CPU cores
    python examples/transfer_digits.py --seeds 5 --epochs 60 --run-root runs/transfer
    python examples/transfer_digits.py --quick      # smoke test: 1 seed, 2 epochs
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlgen.data import ImageDataset, MNISTSubset
from rlgen.registry import DATASETS
from rlgen.vision.classification import ClassifierConfig, load_classifier, train

SUBSET_SEED = 0  # which 50 digits of each class 5-9 form the small training set
PER_CLASS = 50
SETTINGS = {  # name: (start from the pretrained weights?, freeze spec)
    "scratch": (False, "none"),
    "frozen": (True, "backbone"),
    "finetune": (True, "none"),
}


# -- 1. the datasets, registered by name ------------------------------------------------------
def digits(train: bool, keep: range, image_size=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The mnist-subset images (uint8 (N, 1, 28, 28)) and labels of the digits in ``keep``."""
    source = MNISTSubset(train=train, image_size=image_size)
    mask = (source.labels >= keep.start) & (source.labels < keep.stop)
    return source.images[mask], source.labels[mask]


@DATASETS.register("digits-0-4")
def digits_0_4(root: str | Path = "data", train: bool = True, download: bool = False,
               image_size=None, **kw: Any) -> ImageDataset:
    """mnist-subset digits 0-4: 2,000 training, 500 held-out."""
    images, labels = digits(train, range(0, 5), image_size)
    return ImageDataset(images, labels, classes=[str(d) for d in range(5)],
                        name=f"digits-0-4 {'train' if train else 'test'}", **kw)


@DATASETS.register("digits-5-9-50")
def digits_5_9_50(root: str | Path = "data", train: bool = True, download: bool = False,
                  image_size=None, **kw: Any) -> ImageDataset:
    """mnist-subset digits 5-9 relabelled 0-4: 50 per class to train, all 500 held-out to test."""
    images, labels = digits(train, range(5, 10), image_size)
    if train:  # a seeded choice of PER_CLASS images of each class
        rng = np.random.RandomState(SUBSET_SEED)
        chosen = np.concatenate([rng.choice(np.flatnonzero(labels.numpy() == c), PER_CLASS,
                                            replace=False) for c in range(5, 10)])
        chosen = torch.from_numpy(rng.permutation(chosen))
        images, labels = images[chosen], labels[chosen]
    return ImageDataset(images, labels - 5, classes=[str(d) for d in range(5, 10)],
                        name=f"digits-5-9-50 {'train' if train else 'test'}", **kw)


# -- 2. and 3. the runs -----------------------------------------------------------------------
def run(args, **options: Any) -> dict[str, Any]:
    """``train`` one classifier; the run's own summary line goes to stderr."""
    config = ClassifierConfig(
        model=args.model, optimizer="adam", learning_rate=args.learning_rate,
        batch_size=args.batch_size, device=args.device,
        checkpoint_every=0, keep_checkpoints=1, log_every=10**9, log_interval_s=0, **options)
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        result = train(config, progress=False)
    return {"accuracy": result["test/accuracy"], "test_loss": result["test/loss"],
            "best_epoch": int(result["best/epoch"]) if "best/epoch" in result else None,
            "val_accuracy": result.get("best/val_accuracy"),
            "seconds": round(time.perf_counter() - start, 2), "run_dir": result["run_dir"]}


def with_new_head(run_dir: str, out: Path, seed: int) -> str:
    """The weights of ``run_dir``'s best epoch with a freshly initialised output layer (seeded),
    saved as a plain state dict that ``weights=`` accepts."""
    model, meta = load_classifier(run_dir)  # checkpoints/best.pt
    torch.manual_seed(seed)
    model.reset_classifier(meta["num_classes"])
    torch.save(model.state_dict(), out)
    return str(out)


def emit(record: dict[str, Any]) -> None:
    print(json.dumps({"example": "transfer_digits", **record}), flush=True)


def table(results: dict[str, list[float]], losses: dict[str, list[float]], args,
          seconds: float) -> str:
    lines = [f"| start ({PER_CLASS} images per class 5-9) | test accuracy on 500 digits 5-9, % "
             f"(mean ± std over {args.seeds} seeds) | min-max, % | test loss (mean) |",
             "|---|---|---|---|"]
    for name, values in results.items():
        pct = [100 * v for v in values]
        std = statistics.stdev(pct) if len(pct) > 1 else 0.0
        lines.append(f"| {name} | {statistics.fmean(pct):.1f} ± {std:.1f} | "
                     f"{min(pct):.1f}-{max(pct):.1f} | {statistics.fmean(losses[name]):.3f} |")
    lines.append(f"\n{args.model}, {args.epochs} epochs (pretraining {args.pretrain_epochs}), "
                 f"Adam {args.learning_rate:g}, batch {args.batch_size}; {seconds:.0f} s "
                 f"({args.device}, {torch.get_num_threads()} CPU thread(s))")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mnist_conv2_relu", help="a registered model name")
    p.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 3; --quick 1)")
    p.add_argument("--epochs", type=int, default=30, help="epochs of each run on 5-9")
    p.add_argument("--pretrain-epochs", type=int, default=8, help="epochs on 0-4")
    p.add_argument("--batch-size", type=int, default=25)
    p.add_argument("--learning-rate", type=float, default=1e-3, help="Adam, every run")
    p.add_argument("--val-fraction", type=float, default=0.0,
                   help="share of the 250 images held out to pick the best epoch (0: none, "
                        "test the last weights)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (small nets: 1)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto")
    p.add_argument("--run-root", default=None, help="keep the runs here (default: a temp dir)")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 seed, 2 epochs")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.pretrain_epochs = 2, 1
    args.seeds = args.seeds or (1 if args.quick else 3)
    if args.seeds < 1 or args.epochs < 1 or args.pretrain_epochs < 1:
        p.error("--seeds, --epochs and --pretrain-epochs must be >= 1")
    torch.set_num_threads(args.threads)

    wall = time.perf_counter()
    with contextlib.ExitStack() as stack:
        root = Path(args.run_root) if args.run_root else \
            Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="transfer_digits_")))
        root.mkdir(parents=True, exist_ok=True)

        # 2. Pretraining on 0-4.
        pre = run(args, dataset="digits-0-4", epochs=args.pretrain_epochs, seed=0,
                  val_fraction=0.1, run_dir=str(root / "pretrain_0-4"))
        emit({"setting": "pretrain", "dataset": "digits-0-4", "seed": 0,
              "metric": "test_accuracy", "value": pre["accuracy"], "unit": "fraction",
              "epochs": args.pretrain_epochs, **{k: v for k, v in pre.items() if k != "accuracy"}})

        # 3. Three starts on 250 images of 5-9.
        results: dict[str, list[float]] = {name: [] for name in SETTINGS}
        losses: dict[str, list[float]] = {name: [] for name in SETTINGS}
        for seed in range(args.seeds):
            weights = with_new_head(pre["run_dir"], root / f"pretrained_new_head_s{seed}.pt", seed)
            for name, (pretrained, freeze) in SETTINGS.items():
                out = run(args, dataset="digits-5-9-50", epochs=args.epochs, seed=seed,
                          weights=weights if pretrained else None, freeze=freeze,
                          val_fraction=args.val_fraction,
                          run_dir=str(root / f"{name}_s{seed}"))
                results[name].append(out["accuracy"])
                losses[name].append(out["test_loss"])
                emit({"setting": name, "dataset": "digits-5-9-50", "seed": seed,
                      "metric": "test_accuracy", "value": out["accuracy"], "unit": "fraction",
                      "pretrained": pretrained, "freeze": freeze, "epochs": args.epochs,
                      "train_images": PER_CLASS * 5 - round(PER_CLASS * 5 * args.val_fraction),
                      **{k: v for k, v in out.items() if k != "accuracy"}})

    seconds = time.perf_counter() - wall
    for name, values in results.items():
        emit({"setting": name, "metric": "test_accuracy_over_seeds",
              "value": statistics.fmean(values), "unit": "fraction", "values": values,
              "std": statistics.stdev(values) if len(values) > 1 else 0.0,
              "min": min(values), "max": max(values), "seeds": args.seeds})
    emit({"metric": "summary", "value": round(seconds, 1), "unit": "s", "model": args.model,
          "epochs": args.epochs, "pretrain_epochs": args.pretrain_epochs,
          "pretrain_test_accuracy": pre["accuracy"], "threads": torch.get_num_threads(),
          "mean_test_accuracy": {k: round(statistics.fmean(v), 4) for k, v in results.items()}})
    print()
    print(table(results, losses, args, seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
