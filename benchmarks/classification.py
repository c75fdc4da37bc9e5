"""Training throughput of rlgen's classifier trainer against a bare PyTorch loop on the same model.

Goal: the trainer (``rlgen.vision.classification.train``: batch loader, learning-rate schedule,
``Precision.step`` with its NaN/inf check, periodic logging, stop signals) costs under 5% of the
training speed of the bare loop a researcher would write by hand.

Each round times both sides once, back to back, for every model, precision and memory format,
alternating which goes first; the overhead is ``1 - rlgen / bare`` images/s, per round and the
median over ``--rounds``, so a machine whose load drifts (a shared one) hits both alike. Two
clocks, both reported:

- ``wall``: images per second. On a GPU the figure that matters; on a CPU shared with other
  jobs it also counts the time this process waited for a core, which swung single rounds by
  up to 45% on a loaded 2-core machine, far more than the 5% being tested.
- ``cpu``: images per second of this process's CPU time (``time.process_time``, all its
  threads), which other processes move less (10-20% per round there). The default ``--clock``
  on the CPU. Either way, on a shared machine only the median of many rounds says anything.

How each side is timed, only its steady training phase:

- rlgen: ``train(ClassifierConfig(..., max_steps=warmup + steps, log_every=L,
  val_fraction=0))``. Wall: every log of the run carries ``charts/images_per_s`` (images since
  the loop started / seconds), which gives the loop's elapsed time at the log after
  ``--warmup`` steps and at the last step; the rate between the two is the measurement. CPU:
  the process time of a second run of only ``--warmup`` steps is subtracted from this run's,
  which leaves the ``--steps`` steps after the warm-up (setup, warm-up, the final test pass
  and the checkpoint cancel). The loop's own logging counts, every ``--log-every`` steps
  (default: ``--warmup``, more often than the trainer's default 50, so the overhead is if
  anything overstated).
- bare: the same model from ``create_model`` (same seed, same builder options), the same
  training tensors on the device (uint8, scaled to [0, 1] per batch and standardised with the
  split's mean and std), a seeded permutation per epoch, the same batch size and optimiser,
  ``torch.autocast`` for the mixed precisions, ``F.cross_entropy``, ``zero_grad`` / ``backward``
  / ``step``; ``--warmup`` untimed steps, then ``--steps`` timed ones.

Data: models built for one input channel (the MNIST nets) train on the ``mnist-subset`` (4,000
digits, 28x28); the others (resnet18, ...) on random RGB images of ``--image-size`` (3x32x32)
and 10 classes, a dataset this script registers (``classification-bench-random``).

Output: one JSON object per line: images/s of each side per round (``train_images_per_s``,
``train_images_per_cpu_s``), the overhead per round (``value`` on ``--clock``, both clocks
beside it) and its median per setting, and a summary line last: the median overhead over every
round of every setting against the goal, each setting's median, and the quartiles of the
per-round overheads (their spread is the machine's noise: run more ``--rounds`` when it is
wide).

    python benchmarks/classification.py                                # CPU, small budget
    python benchmarks/classification.py --precision 32,bf16-mixed \\
        --memory-format contiguous,channels_last --rounds 5
    python benchmarks/classification.py --device cuda --batch-size 256 --steps 200 --warmup 20
    python benchmarks/classification.py --quick                        # smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from measure import sync  # noqa: E402

from rlgen.data import ImageDataset, load_dataset  # noqa: E402
from rlgen.registry import DATASETS, MODELS  # noqa: E402
from rlgen.runtime import resolve_device  # noqa: E402
from rlgen.vision.backbones import create_model  # noqa: E402
from rlgen.vision.classification import ClassifierConfig, pixel_statistics, train  # noqa: E402

BENCH = "classification"
GOAL = 0.05  # the trainer's overhead over the bare loop
RANDOM = "classification-bench-random"
DTYPES = {"32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
FORMATS = ("contiguous", "channels_last")


@DATASETS.register(RANDOM)
def random_images(root: str | Path = "data", train: bool = True, download: bool = False,
                  image_size: int | None = None, **kw: Any) -> ImageDataset:
    """Random uint8 RGB images with random labels of 10 classes (throughput only)."""
    size = image_size or 32
    g = torch.Generator().manual_seed(0 if train else 1)
    n = 2048 if train else 64
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    return ImageDataset(images, labels, num_classes=10,
                        name=f"{RANDOM} {'train' if train else 'test'}", **kw)


def dataset_for(model: str) -> str:
    """mnist-subset for the nets built for one channel by default, random RGB for the rest."""
    channels = inspect.signature(MODELS.get(model)).parameters.get("in_channels")
    one = channels is not None and channels.default == 1
    return "mnist-subset" if one else RANDOM



# -- the two sides ---------------------------------------------------------------------------
def train_run(setting: dict[str, Any], args, seed: int, run_dir: Path, steps: int
              ) -> tuple[float, dict[int, float]]:
    """One ``train`` call of ``steps`` steps: (its process CPU seconds, {logged step: seconds
    since the loop started}, from the logged throughput)."""
    config = ClassifierConfig(
        model=setting["model"], dataset=setting["dataset"], image_size=setting["image_size"],
        optimizer=args.optimizer, learning_rate=1e-3, batch_size=args.batch_size,
        precision=setting["precision"], channels_last=setting["memory_format"] == FORMATS[1],
        device=args.device, seed=seed, run_dir=str(run_dir), val_fraction=0.0, epochs=10**6,
        max_steps=steps, log_every=args.log_every, checkpoint_every=0, keep_checkpoints=1,
        log_interval_s=0)
    cpu = time.process_time()
    with contextlib.redirect_stdout(sys.stderr):  # the run's summary line
        out = train(config, progress=False)
    cpu = time.process_time() - cpu
    elapsed: dict[int, float] = {}
    with open(Path(out["run_dir"]) / "metrics.jsonl") as f:
        for line in f:
            record = json.loads(line)
            # The first record of a step: the test metrics logged after the loop carry a
            # throughput of the last step again, with the test pass in it.
            if record["tag"] == "charts/images_per_s":
                elapsed.setdefault(record["step"], record["step"] * args.batch_size /
                                   record["value"])
    return cpu, elapsed


def time_rlgen(setting: dict[str, Any], args, seed: int, run_dir: Path) -> dict[str, float]:
    """Images per second (wall, between the logs after ``--warmup`` and ``--warmup + --steps``
    steps) and per CPU second (the difference from a run of ``--warmup`` steps) of the trainer."""
    first, last = args.warmup, args.warmup + args.steps
    cpu_short, _ = train_run(setting, args, seed, run_dir.with_name(run_dir.name + "_short"),
                             first)
    cpu_long, elapsed = train_run(setting, args, seed, run_dir, last)
    images = args.steps * args.batch_size
    cpu = cpu_long - cpu_short
    return {"wall": images / (elapsed[last] - elapsed[first]),
            "cpu": images / cpu if cpu > 0 else float("nan")}


def time_bare(setting: dict[str, Any], args, seed: int, data: dict[str, Any]
              ) -> dict[str, float]:
    """Images per second (wall) and per CPU second of a hand-written loop on the same model,
    data, batch size and optimiser."""
    device, cl = data["device"], setting["memory_format"] == FORMATS[1]
    torch.manual_seed(seed)
    model = create_model(setting["model"], **data["model_kwargs"]).to(device)
    if cl:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
           "sgd": lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9)}[args.optimizer](
        model.parameters(), lr=1e-3)
    dtype = DTYPES[setting["precision"]]
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    images, labels, mean, std = data["images"], data["labels"], data["mean"], data["std"]
    n, b = len(labels), args.batch_size
    g = torch.Generator().manual_seed(seed)

    def batches():
        while True:
            perm = torch.randperm(n, generator=g).to(device)
            yield from perm[: n // b * b].view(-1, b)

    def step(idx: torch.Tensor) -> None:
        x = images[idx].float().div_(255.0)
        x = (x - mean) / std
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), labels[idx])
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    order = batches()
    for _ in range(args.warmup):
        step(next(order))
    sync(device)
    t0, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        step(next(order))
    sync(device)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu
    return {"wall": args.steps * b / wall, "cpu": args.steps * b / cpu}


def bare_data(setting: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The training split on the device, its statistics and the model's builder options, as
    the trainer computes them (``load_training_data`` with no validation split)."""
    train_set = load_dataset(setting["dataset"], train=True, image_size=setting["image_size"])
    mean, std = pixel_statistics(train_set.images)
    kwargs = {"num_classes": train_set.num_classes, "in_channels": train_set.channels}
    if "input_size" in inspect.signature(MODELS.get(setting["model"])).parameters:
        kwargs["input_size"] = train_set.image_size[-1]
    return {"images": train_set.images.to(device), "labels": train_set.labels.to(device),
            "mean": mean, "std": std, "device": device, "model_kwargs": kwargs}


def compare(setting: dict[str, Any], args, device: torch.device, tmp: Path) -> list[float]:
    """``--rounds`` rounds of rlgen and bare in turn for one setting; the overhead per round on
    ``--clock``."""
    data = bare_data(setting, device)
    info = {**setting, "image_size": data["images"].shape[-1], "device": device.type,
            "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup,
            "log_every": args.log_every, "optimizer": args.optimizer,
            "threads": torch.get_num_threads()}
    # Untimed first: imports on first use (tensorboard, torch._dynamo by the optimizer), kernel
    # caches; the CPU clock's short run would otherwise pay for them.
    train_run(setting, args, 0, tmp / "warm-up", args.warmup)
    rates: dict[str, list[dict[str, float]]] = {"rlgen": [], "bare": []}
    overheads: dict[str, list[float]] = {"wall": [], "cpu": []}
    for r in range(args.rounds):
        for side in ("rlgen", "bare") if r % 2 == 0 else ("bare", "rlgen"):  # alternate
            if side == "rlgen":
                run_dir = tmp / "_".join((setting["model"], setting["precision"],
                                          setting["memory_format"], str(r)))
                rate = time_rlgen(setting, args, r, run_dir)
            else:
                rate = time_bare(setting, args, r, data)
            rates[side].append(rate)
            for clock, metric in (("wall", "train_images_per_s"),
                                  ("cpu", "train_images_per_cpu_s")):
                emit({"metric": metric, "value": num(rate[clock], 2), "unit": "images/s",
                      "impl": side, "round": r, **info})
        for clock in overheads:
            overheads[clock].append(1 - rates["rlgen"][-1][clock] / rates["bare"][-1][clock])
        emit({"metric": "overhead", "value": num(overheads[args.clock][-1]),
              "unit": "1 - rlgen/bare", "clock": args.clock, "round": r,
              **{clock: num(v[-1]) for clock, v in overheads.items()}, **info})

    def median(side: str, clock: str) -> float | None:
        return num(finite_median([rate[clock] for rate in rates[side]]), 2)

    emit({"metric": "overhead_median", "value": num(finite_median(overheads[args.clock])),
          "unit": "1 - rlgen/bare", "clock": args.clock,
          **{f"per_round_{clock}": [num(o) for o in v] for clock, v in overheads.items()},
          **{f"median_{clock}": num(finite_median(v)) for clock, v in overheads.items()},
          "rlgen_images_per_s": median("rlgen", "wall"),
          "bare_images_per_s": median("bare", "wall"),
          "rlgen_images_per_cpu_s": median("rlgen", "cpu"),
          "bare_images_per_cpu_s": median("bare", "cpu"), "goal": GOAL, **info})
    return overheads[args.clock]


def finite_median(values: list[float]) -> float:
    """The median of the finite values (NaN if none): a CPU-clock round whose short run took
    longer than its long one (possible only at a few steps) has no figure."""
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def num(value: float, digits: int = 4) -> float | None:
    """Rounded for the JSON line; None for NaN / inf (not valid JSON)."""
    return round(value, digits) if math.isfinite(value) else None


def emit(record: dict[str, Any]) -> dict[str, Any]:
    print(json.dumps({"benchmark": BENCH, **record}), flush=True)
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="mnist_conv2_relu,resnet18",
                   help="comma-separated registered model names")
    p.add_argument("--precision", default="32", help="comma-separated: 32,bf16-mixed,16-mixed")
    p.add_argument("--memory-format", default="contiguous",
                   help="comma-separated: contiguous,channels_last")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=40, help="timed training steps per side and round")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    p.add_argument("--log-every", type=int, default=None,
                   help="the trainer's --log-every (default: --warmup; must divide --warmup)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--image-size", type=int, default=32,
                   help="side of the random RGB images (models not built for MNIST)")
    p.add_argument("--optimizer", choices=("adam", "adamw", "sgd"), default="adam")
    p.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 is steadier on a shared machine; 0: torch's choice)")
    p.add_argument("--clock", choices=("cpu", "wall"), default=None,
                   help="the overhead that the medians and the goal use (default: cpu on the "
                        "CPU, wall on a GPU and with --quick); both are printed")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: mnist_conv2_relu, 6 steps, 2 warm-up, 1 round, batch 32, "
                        "wall clock")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.steps, args.warmup, args.rounds = "mnist_conv2_relu", 6, 2, 1
        args.batch_size = 32
    models = [m for m in args.models.split(",") if m]
    precisions = [x for x in args.precision.split(",") if x]
    formats = [x for x in args.memory_format.split(",") if x]
    bad = [x for x in precisions if x not in DTYPES] + [x for x in formats if x not in FORMATS]
    if bad:
        p.error(f"unknown --precision / --memory-format values {bad}; expected "
                f"{list(DTYPES)} / {list(FORMATS)}")
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        p.error(f"unknown --models {unknown}; see `rlgen list models`")
    if min(args.steps, args.warmup, args.rounds, args.batch_size) < 1:
        p.error("--steps, --warmup, --rounds and --batch-size must be >= 1")
    args.log_every = args.log_every or args.warmup
    if args.log_every < 1 or args.warmup % args.log_every:
        p.error(f"--log-every {args.log_every} must divide --warmup {args.warmup}: the "
                "measurement starts at a log")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    args.device = str(device)
    # A smoke test's few steps are too short for the CPU clock's difference of two runs.
    args.clock = args.clock or ("cpu" if device.type == "cpu" and not args.quick else "wall")

    per_round: dict[str, list[float]] = {}
    wall = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_classification_") as tmp:
        for model in models:
            dataset = dataset_for(model)
            for precision in precisions:
                for fmt in formats:
                    setting = {"model": model, "precision": precision, "memory_format": fmt,
                               "dataset": dataset,
                               "image_size": args.image_size if dataset == RANDOM else None}
                    per_round[f"{model}/{precision}/{fmt}"] = compare(setting, args, device,
                                                                      Path(tmp))
    medians = {k: finite_median(v) for k, v in per_round.items()}
    pooled = [o for v in per_round.values() for o in v if math.isfinite(o)]
    overall = finite_median(pooled)
    quartiles = statistics.quantiles(pooled, n=4) if len(pooled) > 1 else [overall] * 3
    emit({"metric": "summary", "value": num(overall),
          "unit": "median overhead (1 - rlgen/bare) over all rounds and settings",
          "clock": args.clock, "goal": GOAL, "meets_goal": bool(overall < GOAL),
          "overheads": {k: num(v) for k, v in medians.items()},
          "worst_setting_median": num(max(medians.values())),
          "per_round_quartiles": [num(q) for q in quartiles],
          "rounds": args.rounds, "device": device.type, "batch_size": args.batch_size,
          "steps": args.steps, "warmup": args.warmup, "log_every": args.log_every,
          "threads": torch.get_num_threads(), "seconds": round(time.perf_counter() - wall, 1)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
