"""Speed of the detection pieces: non-maximum suppression, and training / inference images/s
of every detector in ``rlgen.registry.DETECTION_MODELS`` per precision.

NMS: random boxes (centres uniform in a 1000 x 1000 image, sides 10..200 pixels, scores
uniform; ``batched_nms`` with 20 classes), IoU threshold 0.5, for rlgen's ``nms`` /
``batched_nms`` (``rlgen.vision.boxes``: blockwise suppression matrices on the device) and,
beside them, the plain brute-force torch loop every tutorial writes (take the best box, drop
the boxes overlapping it by more than the threshold, repeat; per class, then merged by score).
Both must keep the same boxes (asserted) before the median time of ``--repeats`` calls is
reported.

Detectors: each registered detector that builds (``yolov1``, ``faster_rcnn``, plugins) on
``--backbone`` at ``--size`` with ``--num-classes`` classes and one to four random boxes per
image: a training step (forward with targets + backward + SGD step) and inference (``eval()``,
``torch.inference_mode``, detections after NMS), median of ``--steps`` timed steps after
``--warmup``; precisions 32 on the CPU, 32 / 16-mixed / bf16-mixed on CUDA (autocast; the
losses are float32 inside the detectors).

Output: one JSON object per line (``nms_ms`` per op / size / implementation, ``nms_speedup``
per op / size, ``{train,inference}_images_per_s`` per model / precision), a markdown table on
stderr, then a summary line last.

    python benchmarks/detection.py                    # CPU: NMS 1k / 10k; detectors 224x224
    python benchmarks/detection.py --device cuda      # + 16-mixed and bf16-mixed
    python benchmarks/detection.py --models yolov1 --backbone resnet50 --size 448
    python benchmarks/detection.py --quick            # smoke test: NMS 1k, 64x64, 1 step
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from measure import autocast, sync  # noqa: E402

from rlgen.registry import DETECTION_MODELS  # noqa: E402
from rlgen.vision.boxes import batched_nms, box_iou, nms  # noqa: E402

BENCH = "detection"


def random_boxes(n: int, classes: int, seed: int, device: torch.device):
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(n, 2, generator=g) * 1000
    side = 10 + torch.rand(n, 2, generator=g) * 190
    boxes = torch.cat([centre - side / 2, centre + side / 2], dim=1)
    scores = torch.rand(n, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    return boxes.to(device), scores.to(device), labels.to(device)


def reference_nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """The brute-force loop: best remaining box kept, its overlaps above the threshold dropped."""
    order = torch.argsort(scores, descending=True, stable=True)
    keep = []
    while order.numel():
        best = order[0]
        keep.append(best)
        rest = order[1:]
        overlaps = box_iou(boxes[best][None], boxes[rest])[0]
        order = rest[overlaps <= threshold]
    return torch.stack(keep) if keep else torch.empty(0, dtype=torch.int64)


def reference_batched_nms(boxes, scores, labels, threshold: float) -> torch.Tensor:
    kept = [torch.nonzero(labels == c).squeeze(1)[
        reference_nms(boxes[labels == c], scores[labels == c], threshold)]
        for c in labels.unique()]
    kept = torch.cat(kept).sort().values  # equal scores: the earlier box first
    return kept[torch.argsort(scores[kept], descending=True, stable=True)]



def median_time(fn, repeats: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_nms(sizes: list[int], repeats: int, device: torch.device, emit) -> dict:
    results = {}
    for n in sizes:
        b, s, c = random_boxes(n, 20, seed=n, device=device)
        cases = {
            "nms": (lambda b=b, s=s: nms(b, s, 0.5),
                    lambda b=b, s=s: reference_nms(b, s, 0.5)),
            "batched_nms": (lambda b=b, s=s, c=c: batched_nms(b, s, c, 0.5),
                            lambda b=b, s=s, c=c: reference_batched_nms(b, s, c, 0.5)),
        }
        for op, (ours, reference) in cases.items():
            kept = ours()
            if not torch.equal(kept.cpu(), reference().cpu()):
                raise AssertionError(f"{op} on {n} boxes: rlgen and the reference loop differ")
            timed = {}
            for impl, fn in (("rlgen", ours), ("reference", reference)):
                seconds = median_time(fn, repeats, 1, device)
                timed[impl] = 1000 * seconds
                emit({"metric": "nms_ms", "op": op, "impl": impl, "boxes": n,
                      "kept": int(kept.numel()), "value": round(1000 * seconds, 4), "unit": "ms"})
            emit({"metric": "nms_speedup", "op": op, "boxes": n,
                  "value": round(timed["reference"] / timed["rlgen"], 3),
                  "unit": "reference_ms/rlgen_ms"})
            results[f"{op}/{n}"] = timed
    return results


def random_targets(batch: int, size: int, classes: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batch):
        k = int(torch.randint(1, 5, (1,), generator=g))
        corner = torch.rand(k, 2, generator=g) * size * 0.6
        side = size * (0.15 + 0.25 * torch.rand(k, 2, generator=g))
        boxes = torch.cat([corner, (corner + side).clamp(max=size)], dim=1)
        out.append({"boxes": boxes.to(device),
                    "labels": torch.randint(0, classes, (k,), generator=g).to(device)})
    return out



def bench_detector(name: str, args, precision: str, device: torch.device, emit) -> dict:
    torch.manual_seed(0)
    size = args.size
    model = DETECTION_MODELS.create(name, num_classes=args.num_classes, in_channels=3,
                                    backbone=args.backbone, image_size=(size, size)).to(device)
    images = torch.rand(args.batch_size, 3, size, size, device=device)
    targets = random_targets(args.batch_size, size, args.num_classes, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
    params = sum(p.numel() for p in model.parameters())

    def train_step():
        model.train()
        with autocast(device, precision):
            loss = model(images, targets)["loss"]
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    def inference_step():
        model.eval()
        with torch.inference_mode(), autocast(device, precision):
            model(images)

    rates = {}
    for mode, fn in (("train", train_step), ("inference", inference_step)):
        seconds = median_time(fn, args.steps, args.warmup, device)
        rates[mode] = args.batch_size / seconds
        emit({"metric": f"{mode}_images_per_s", "model": name, "backbone": args.backbone,
              "precision": precision, "image_size": size, "batch_size": args.batch_size,
              "params": params, "value": round(rates[mode], 3), "unit": "images/s"})
    return rates


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default=None,
                   help="comma-separated detectors (default: every registered one)")
    p.add_argument("--backbone", default=None, help="backbone of the detectors (resnet18)")
    p.add_argument("--size", type=int, default=None, help="square image size (224; quick 64)")
    p.add_argument("--batch-size", type=int, default=None, help="images per step (4; quick 2)")
    p.add_argument("--num-classes", type=int, default=20, help="object classes (VOC's 20)")
    p.add_argument("--precision", default=None,
                   help="comma-separated: 32,16-mixed,bf16-mixed (default: 32 on CPU, all three "
                        "on CUDA)")
    p.add_argument("--nms-sizes", default=None, help="comma-separated box counts (1000,10000)")
    p.add_argument("--repeats", type=int, default=None, help="timed NMS calls (5; quick 1)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--steps", type=int, default=None, help="timed detector steps (3; quick 1)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (1)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quick", action="store_true", help="smoke test: NMS 1k, 64x64, 1 step")
    args = p.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    if args.threads:
        torch.set_num_threads(args.threads)
    quick = args.quick
    args.size = args.size or (64 if quick else 224)
    args.batch_size = args.batch_size or (2 if quick else 4)
    args.steps = args.steps or (1 if quick else 3)
    args.warmup = 1 if args.warmup is None else args.warmup
    args.repeats = args.repeats or (1 if quick else 5)
    args.backbone = args.backbone or ("lenet5" if quick else "resnet18")
    sizes = [int(s) for s in (args.nms_sizes or ("1000" if quick else "1000,10000")).split(",")]
    precisions = (args.precision.split(",") if args.precision
                  else (["32", "16-mixed", "bf16-mixed"] if device.type == "cuda" else ["32"]))
    for precision in precisions:
        if precision not in ("32", "16-mixed", "bf16-mixed"):
            p.error(f"--precision: unknown {precision!r} (32, 16-mixed, bf16-mixed)")
    names = args.models.split(",") if args.models else DETECTION_MODELS.names()
    for name in names:
        DETECTION_MODELS.get(name)  # unknown names fail before any timing

    settings = {"benchmark": BENCH, "device": str(device), "torch": torch.__version__,
                "threads": torch.get_num_threads()}

    def emit(record: dict) -> None:
        print(json.dumps({"benchmark": BENCH, **record, **{k: v for k, v in settings.items()
                                                          if k != "benchmark"}}), flush=True)

    nms_results = bench_nms(sizes, args.repeats, device, emit)
    rates: dict[str, dict[str, float]] = {}
    for name in names:
        for precision in precisions:
            try:
                rates[f"{name}/{precision}"] = bench_detector(name, args, precision, device, emit)
            except (RuntimeError, NotImplementedError) as exc:  # an op without this dtype
                emit({"metric": "error", "model": name, "precision": precision,
                      "value": None, "unit": "", "error": str(exc).splitlines()[0][:200]})

    print("\n| op | boxes | rlgen ms | reference loop ms | speed-up |", file=sys.stderr)
    print("|---|---|---|---|---|", file=sys.stderr)
    for key, timed in nms_results.items():
        op, n = key.split("/")
        print(f"| {op} | {n} | {timed['rlgen']:.2f} | {timed['reference']:.2f} | "
              f"{timed['reference'] / timed['rlgen']:.1f}x |", file=sys.stderr)
    print("\n| model | backbone | precision | size | batch | train images/s | "
          "inference images/s |", file=sys.stderr)
    print("|---|---|---|---|---|---|---|", file=sys.stderr)
    for key, rate in rates.items():
        name, precision = key.split("/")
        print(f"| {name} | {args.backbone} | {precision} | {args.size} | {args.batch_size} | "
              f"{rate['train']:.2f} | {rate['inference']:.2f} |", file=sys.stderr)
    largest = max(sizes)
    print(json.dumps({
        **settings, "metric": "summary",
        "value": round(nms_results[f"nms/{largest}"]["reference"]
                       / nms_results[f"nms/{largest}"]["rlgen"], 3),
        "unit": f"nms speed-up over the reference loop at {largest} boxes",
        "nms_ms": {k: {i: round(v, 4) for i, v in t.items()} for k, t in nms_results.items()},
        "images_per_s": {k: {m: round(v, 3) for m, v in r.items()} for k, r in rates.items()},
        "backbone": args.backbone, "image_size": args.size, "batch_size": args.batch_size,
    }), flush=True)


if __name__ == "__main__":
    main()
