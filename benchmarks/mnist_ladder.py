"""Nielsen's MNIST "techniques ladder" (Neural Networks and Deep Learning, ch. 6) and Saito's
``deep_convnet``, trained with rlgen's classifier trainer and set beside the published figures.

Steps (each adds one technique to the previous one; Nielsen's hyperparameters, ``network3.py``):

==========  ======================  ================================================  ========
step        model                   training                                          book, %
==========  ======================  ================================================  ========
fc100       mnist_fc100             784-100-10 sigmoid; SGD eta 0.1, 60 epochs        97.80
conv1       mnist_conv1             + conv-pool 20@5x5; as above                      98.78
conv2       mnist_conv2             + conv-pool 40@5x5; as above                      99.06
relu        mnist_conv2_relu        ReLU; eta 0.03, L2 lambda 0.1, 60 epochs          99.23
expanded    mnist_conv2_relu        + 1-pixel shifts of every image (5x the data)     99.37
dropout     mnist_conv2_dropout     2x fc1000, dropout 0.5; expanded, eta 0.03, no    99.60
                                    L2 (as in the book), 40 epochs
ensemble    5x mnist_conv2_dropout  mean of the 5 nets' probabilities                 99.67
deep        deep_convnet            Saito ch. 8: Adam lr 1e-3, batch 100, 20 epochs,  99.38
                                    He init (the model's own)
==========  ======================  ================================================  ========

All SGD steps use mini-batches of 10 and plain SGD (no momentum). The test accuracy is that of
the weights of the best validation epoch (the trainer's ``test/accuracy``), as in the book. The
validation set is ``--val-fraction`` of the training split, carved off with each run's seed
(so the seeds differ in their validation split too; every step of one seed uses the same split).

L2: ``network3.py`` adds ``0.5 * lmbda * sum(w**2) / num_training_batches`` to the mini-batch's
mean cost, so each SGD step does ``w -> (1 - eta * lmbda / num_training_batches) w``, with
``num_training_batches = n / mini_batch``. That is torch SGD with ``weight_decay = lmbda *
batch_size / n``, computed here from the *actual* training-set size n (after the validation split
and, for the expanded steps, after the 5x expansion): 0.1 * 10 / 3,600 = 2.8e-4 for ``relu`` on
the mnist-subset and 0.1 * 10 / 18,000 = 5.6e-5 for ``expanded``. (Chapter 3's ``network2.py``
decays by ``eta * lmbda / n`` per step, ``weight_decay = lmbda / n``, ten times weaker at
mini-batch 10; ``--l2-convention network2`` uses that.) torch's weight decay also reaches the
biases, which ``network3.py`` leaves alone, and the weights keep PyTorch's default
initialisation, not ``network3.py``'s N(0, 1/n_out).

``--epochs-scale`` multiplies every step's published epoch count (rounded, at least 1): the
full ladder with 3 seeds and the published epochs takes hours on a CPU. The ensemble of seed s
is built from 5 dropout nets trained with seeds ``s + 1000 * k`` (k = 0..4); the k = 0 member
is the ``dropout`` step's own net of seed s, reused when that step ran in the same invocation
(the ensemble line's ``seconds`` is the training time of all its members, the reused one
included). The ensemble's ``vote_accuracy`` (the book's plurality vote) is reported beside it.

The best epoch is the first one with the highest validation accuracy (rlgen's trainer breaks
ties towards the earlier epoch; ``network3.py`` uses ``>=``, the later one). With 400
validation digits the accuracy moves in steps of 0.25 %, so ties are common.

Measured on the shared 2-core CPU machine (1 torch thread; 2 threads were 5-6x slower at
mini-batch 10 next to other jobs): ``--epochs-scale 0.2 --seeds 3`` took 58.6 min under a load
of 2-4 other processes (about 32 min expected from a quiet machine's per-epoch times); the
ensemble is 55 % of it, the expanded and dropout steps 25 %. Seconds per seed at that scale:
fc100 3, conv1 12, conv2 21, relu 29, expanded 136, dropout 153, ensemble 951 (five nets),
deep 18.

Full MNIST (the book's setting; 50,000 training / 10,000 validation digits as in Nielsen with
``--val-fraction 0.1666667``)::

    python benchmarks/mnist_ladder.py --dataset mnist --data-root data --val-fraction 0.1666667

Expected time, scaled from the per-step speed measured on the mnist-subset (50,000 / 3,600 the
images per epoch, the published epochs): about 22 h per seed on that 2-core CPU under load
(fc100 0.1 h, conv1 0.2, conv2 0.4, relu 0.6, expanded 2.6, dropout 3.0, the 4 further
ensemble nets 15.4, deep 0.25), about 12-15 h on a quiet one, so 2-3 days for ``--seeds 3``;
``--seeds 1 --steps fc100,conv1,conv2,relu,expanded,dropout`` takes about 7 h.

Output: one JSON object per (step, seed), one summary line per step (mean, min, max and sample
standard deviation over the seeds), a final JSON summary line, then a markdown table with the
published full-MNIST figure beside each step.

    python benchmarks/mnist_ladder.py --epochs-scale 0.25          # the whole ladder, 3 seeds
    python benchmarks/mnist_ladder.py --steps relu,expanded --seeds 5
    python benchmarks/mnist_ladder.py --quick --seeds 1 --steps fc100,conv1   # smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

BENCH = "mnist_ladder"


@dataclass(frozen=True)
class Step:
    name: str
    model: str
    technique: str
    epochs: int  # published epoch count
    published: float  # published full-MNIST test accuracy, %
    learning_rate: float
    lmbda: float = 0.0  # Nielsen's L2 lambda
    optimizer: str = "sgd"
    batch_size: int = 10
    expand: bool = False
    dropout: float | None = None
    ensemble: bool = False
    source: str = "Nielsen ch. 6"


STEPS: dict[str, Step] = {s.name: s for s in (
    Step("fc100", "mnist_fc100", "784-100-10 sigmoid", 60, 97.80, 0.1),
    Step("conv1", "mnist_conv1", "+ conv-pool 20@5x5", 60, 98.78, 0.1),
    Step("conv2", "mnist_conv2", "+ conv-pool 40@5x5", 60, 99.06, 0.1),
    Step("relu", "mnist_conv2_relu", "ReLU, eta 0.03, L2 0.1", 60, 99.23, 0.03, lmbda=0.1),
    Step("expanded", "mnist_conv2_relu", "+ 1-pixel shifts (5x data)", 60, 99.37, 0.03,
         lmbda=0.1, expand=True),
    Step("dropout", "mnist_conv2_dropout", "2x fc1000, dropout 0.5", 40, 99.60, 0.03,
         expand=True, dropout=0.5),
    Step("ensemble", "mnist_conv2_dropout", "ensemble (mean prob.)", 40, 99.67, 0.03,
         expand=True, dropout=0.5, ensemble=True),
    Step("deep", "deep_convnet", "Saito deep_convnet, Adam", 20, 99.38, 1e-3,
         optimizer="adam", batch_size=100, source="Saito ch. 8"),
)}
QUICK_STEPS = ("fc100", "conv1", "relu")


def emit(record: dict[str, Any]) -> dict[str, Any]:
    print(json.dumps({"benchmark": BENCH, **record}), flush=True)
    return record


def scaled_epochs(step: Step, scale: float, quick: bool) -> int:
    return 1 if quick else max(1, round(step.epochs * scale))


def training_size(dataset_size: int, val_fraction: float, expand: bool) -> int:
    """Training examples left after the trainer's validation split (``split_validation``
    holds out ``round(n * fraction)``) and, with expansion, the four shifted copies."""
    n = dataset_size - int(round(dataset_size * val_fraction))
    return n * 5 if expand else n


def weight_decay(step: Step, n_train: int, convention: str) -> float:
    """torch SGD ``weight_decay`` equal to Nielsen's L2 ``lmbda`` on ``n_train`` examples."""
    if not step.lmbda:
        return 0.0
    if convention == "network3":  # lmbda / num_training_batches
        return step.lmbda * step.batch_size / n_train
    return step.lmbda / n_train  # network2.py: w -> (1 - eta * lmbda / n) w


def train_one(step: Step, seed: int, args, run_dir: Path, epochs: int, n_train: int
              ) -> dict[str, Any]:
    from rlgen.vision.classification import ClassifierConfig, train

    config = ClassifierConfig(
        model=step.model, dataset=args.dataset, data_root=args.data_root, download=args.download,
        optimizer=step.optimizer, learning_rate=step.learning_rate, momentum=0.0,
        weight_decay=weight_decay(step, n_train, args.l2_convention),
        val_fraction=args.val_fraction, expand_shifts=step.expand, dropout=step.dropout,
        epochs=epochs, batch_size=step.batch_size, seed=seed, device=args.device,
        run_dir=str(run_dir), checkpoint_every=0, log_every=10**9, sample_every=0,
        log_interval_s=0, keep_checkpoints=1)
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON lines
        out = train(config, progress=False)
    seconds = time.perf_counter() - start
    return {"accuracy": float(out["test/accuracy"]), "best_epoch": int(out.get("best/epoch", 0)),
            "val_accuracy": out.get("best/val_accuracy"), "seconds": seconds,
            "run_dir": out["run_dir"], "weight_decay": config.weight_decay}


def ensemble_accuracy(run_dirs: list[str], args, out_dir: Path) -> dict[str, Any]:
    from rlgen.vision.classification import ClassifierEvalConfig, evaluate

    results = {}
    with contextlib.redirect_stdout(sys.stderr):
        for rule in ("mean", "vote"):
            results[rule] = evaluate(ClassifierEvalConfig(
                checkpoint=tuple(run_dirs), combine=rule, device=args.device,
                out_dir=str(out_dir / rule)))
    return {"accuracy": results["mean"]["accuracy"], "vote_accuracy": results["vote"]["accuracy"],
            "member_accuracies": results["mean"]["member_accuracies"]}


def spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def markdown_table(summaries: list[dict[str, Any]], args) -> str:
    head = (f"| step | model | technique | epochs (book -> run) | {args.dataset} test accuracy, % "
            f"(mean ± std [min, max], {args.seeds} seed{'s' if args.seeds > 1 else ''}) "
            f"| change vs previous step | published (full MNIST), % |")
    lines = [head, "|" + "---|" * 7]
    previous = None
    for s in summaries:
        pct = {k: 100 * s[k] for k in ("mean", "min", "max", "std")}
        delta = "" if previous is None else f"{pct['mean'] - previous:+.2f}"
        if s["step"] == "deep":
            delta = ""  # not a rung of Nielsen's ladder
        else:
            previous = pct["mean"]
        lines.append(
            f"| {s['step']} | {s['model']} | {s['technique']} | {s['published_epochs']} -> "
            f"{s['epochs']} | {pct['mean']:.2f} ± {pct['std']:.2f} [{pct['min']:.2f}, "
            f"{pct['max']:.2f}] | {delta} | {s['published_percent']:.2f} ({s['source']}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()),
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="steps: " + ", ".join(STEPS))
    parser.add_argument("--steps", default=None,
                        help="comma-separated ladder steps (default: all; with --quick: "
                             + ",".join(QUICK_STEPS) + ")")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per step")
    parser.add_argument("--epochs-scale", type=float, default=1.0,
                        help="multiply every step's published epoch count (rounded, >= 1)")
    parser.add_argument("--dataset", default="mnist-subset",
                        help="mnist-subset (4,000 train / 1,000 test) or mnist (needs "
                             "--data-root with the MNIST files)")
    parser.add_argument("--data-root", default="data", help="directory of the dataset files")
    parser.add_argument("--download", action="store_true", help="download a missing dataset")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="validation share of the training split (Nielsen: 1/6 of MNIST)")
    parser.add_argument("--l2-convention", choices=["network3", "network2"], default="network3",
                        help="network3: weight_decay = lambda * batch / n (ch. 6's code); "
                             "network2: lambda / n (ch. 3's formula)")
    parser.add_argument("--ensemble-size", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 is fastest at mini-batch 10 on a shared "
                             "machine)")
    parser.add_argument("--run-root", default=None,
                        help="keep the run directories here (default: a temporary directory)")
    parser.add_argument("--quick", action="store_true",
                        help="1 epoch per step and, without --steps, only "
                             + ",".join(QUICK_STEPS) + " (smoke test)")
    args = parser.parse_args(argv)

    names = (args.steps.split(",") if args.steps else
             list(QUICK_STEPS) if args.quick else list(STEPS))
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in STEPS]
    if unknown:
        parser.error(f"unknown step(s) {unknown}; choose from {', '.join(STEPS)}")
    if args.seeds < 1 or args.epochs_scale <= 0 or args.ensemble_size < 1:
        parser.error("--seeds and --ensemble-size must be >= 1, --epochs-scale > 0")
    if args.device == "cpu" and args.threads:
        torch.set_num_threads(args.threads)

    from rlgen.data import load_dataset

    dataset_size = len(load_dataset(args.dataset, train=True, root=args.data_root,
                                    download=args.download))
    wall = time.perf_counter()
    with contextlib.ExitStack() as stack:
        root = Path(args.run_root) if args.run_root else \
            Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mnist_ladder_")))
        dropout_runs: dict[tuple[int, int], dict[str, Any]] = {}  # (seed, epochs) -> result
        summaries = []
        for name in names:
            step = STEPS[name]
            epochs = scaled_epochs(step, args.epochs_scale, args.quick)
            n_train = training_size(dataset_size, args.val_fraction, step.expand)
            settings = dict(
                dataset=args.dataset, train_images=n_train, optimizer=step.optimizer,
                learning_rate=step.learning_rate, momentum=0.0, batch_size=step.batch_size,
                l2_lambda=step.lmbda, weight_decay=weight_decay(step, n_train,
                                                                args.l2_convention),
                expand_shifts=step.expand, dropout=step.dropout, published_epochs=step.epochs,
                epochs_scale=args.epochs_scale, val_fraction=args.val_fraction,
                device=args.device, threads=torch.get_num_threads())
            values = []
            for seed in range(args.seeds):
                extra: dict[str, Any] = {}
                if step.ensemble:
                    members, seconds = [], 0.0
                    for k in range(args.ensemble_size):
                        member_seed = seed + 1000 * k
                        result = dropout_runs.get((member_seed, epochs))
                        reused = result is not None
                        if result is None:
                            result = train_one(step, member_seed, args,
                                               root / f"ensemble_s{member_seed}", epochs, n_train)
                        seconds += result["seconds"]
                        members.append({**result, "seed": member_seed, "reused": reused})
                    start = time.perf_counter()
                    scores = ensemble_accuracy([m["run_dir"] for m in members], args,
                                               root / f"ensemble_eval_s{seed}")
                    seconds += time.perf_counter() - start
                    value, best_epoch = scores["accuracy"], [m["best_epoch"] for m in members]
                    extra = {"combine": "mean", "vote_accuracy": scores["vote_accuracy"],
                             "member_accuracies": scores["member_accuracies"],
                             "member_seeds": [m["seed"] for m in members],
                             "reused_members": sum(m["reused"] for m in members)}
                else:
                    result = train_one(step, seed, args, root / f"{name}_s{seed}", epochs,
                                       n_train)
                    if name == "dropout":
                        dropout_runs[(seed, epochs)] = result
                    value, best_epoch, seconds = (result["accuracy"], result["best_epoch"],
                                                  result["seconds"])
                    extra = {"val_accuracy": result["val_accuracy"],
                             "train_images_per_s": round(epochs * n_train / seconds, 1)}
                values.append(value)
                emit({"step": name, "model": step.model, "seed": seed, "metric": "test_accuracy",
                      "value": value, "unit": "fraction", "epochs": epochs,
                      "best_epoch": best_epoch, "seconds": round(seconds, 2), **extra,
                      **settings})
            technique = (f"ensemble of {args.ensemble_size} (mean prob.)" if step.ensemble
                         else step.technique)
            summary = {"step": name, "model": step.model, "technique": technique,
                       "metric": "test_accuracy_over_seeds", "value": statistics.fmean(values),
                       "unit": "fraction", **spread(values), "seeds": args.seeds,
                       "values": values, "epochs": epochs, "published_epochs": step.epochs,
                       "published_percent": step.published, "source": step.source,
                       "dataset": args.dataset, "epochs_scale": args.epochs_scale}
            summaries.append(summary)
        for summary in summaries:
            emit(summary)
        emit({"metric": "summary", "value": round(time.perf_counter() - wall, 1), "unit": "s",
              "note": "wall time of the whole ladder", "steps": names, "seeds": args.seeds,
              "epochs_scale": args.epochs_scale, "dataset": args.dataset,
              "mean_test_accuracy": {s["step"]: round(s["mean"], 4) for s in summaries},
              "device": args.device, "threads": torch.get_num_threads()})
        print()
        print(markdown_table(summaries, args), flush=True)
    return 0 if all(math.isfinite(s["mean"]) for s in summaries) else 1


if __name__ == "__main__":
    sys.exit(main())
