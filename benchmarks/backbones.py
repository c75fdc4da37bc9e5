"""Throughput of rlgen's classifiers against the same architectures written in plain PyTorch.

For each model, precision and memory format it measures images/s for inference (forward under
``torch.inference_mode``) and for training (forward + cross-entropy + backward + SGD step),
for the rlgen model (``create_model``) and for a "plain" reference: the same architecture
built the most direct way (``nn.Sequential`` and two small block classes, no registry, no
input checks, no stage bookkeeping). Before timing, the plain model receives the rlgen
model's weights and must give the same outputs, so both sides compute the same function.

The two implementations are timed alternately, step by step, and the median step time is
reported, so that load from other processes on a shared machine hits both sides alike.

Output: one JSON object per line per measurement, then a summary line with the rlgen / plain
throughput ratio per model and setting (1.0 = no overhead).

    python benchmarks/backbones.py                      # resnet18, batch 8, 224x224, CPU
    python benchmarks/backbones.py --models resnet50,vgg16 --precision 32,bf16-mixed \\
        --memory-format contiguous,channels_last --device cuda --compile
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from measure import PRECISIONS, autocast, sync  # noqa: E402
from torch import nn

from rlgen.vision.backbones import create_model

# ---------------------------------------------------------------- plain reference models


class PlainBasicBlock(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.short = None
        if stride != 1 or cin != planes:
            self.short = nn.Sequential(
                nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.short is None else self.short(x)))


class PlainBottleneck(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.short = None
        if stride != 1 or cin != planes * 4:
            self.short = nn.Sequential(
                nn.Conv2d(cin, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.short is None else self.short(x)))


def plain_resnet(bottleneck: bool, counts: list[int], num_classes: int = 1000) -> nn.Module:
    block = PlainBottleneck if bottleneck else PlainBasicBlock
    width = 4 if bottleneck else 1
    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 7, 2, 3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1),
    ]
    cin = 64
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512), counts)):
        for j in range(n):
            layers.append(block(cin, planes, 2 if (i > 0 and j == 0) else 1))
            cin = planes * width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


def plain_vgg(widths: list, num_classes: int = 1000) -> nn.Module:
    layers: list[nn.Module] = []
    cin = 3
    for w in widths:
        if w == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(cin, w, 3, padding=1), nn.ReLU(inplace=True)]
            cin = w
    layers += [
        nn.AdaptiveAvgPool2d(7), nn.Flatten(),
        nn.Linear(512 * 49, 4096), nn.ReLU(inplace=True), nn.Dropout(),
        nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(),
        nn.Linear(4096, num_classes),
    ]  # fmt: skip
    return nn.Sequential(*layers)


def plain_alexnet(num_classes: int = 1000) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.AdaptiveAvgPool2d(6), nn.Flatten(),
        nn.Dropout(), nn.Linear(9216, 4096), nn.ReLU(inplace=True),
        nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
        nn.Linear(4096, num_classes),
    )  # fmt: skip


_M = "M"
PLAIN: dict[str, Callable[[], nn.Module]] = {
    "resnet18": lambda: plain_resnet(False, [2, 2, 2, 2]),
    "resnet34": lambda: plain_resnet(False, [3, 4, 6, 3]),
    "resnet50": lambda: plain_resnet(True, [3, 4, 6, 3]),
    "resnet101": lambda: plain_resnet(True, [3, 4, 23, 3]),
    "resnet152": lambda: plain_resnet(True, [3, 8, 36, 3]),
    "vgg11": lambda: plain_vgg([64, _M, 128, _M, 256, 256, _M] + [512, 512, _M] * 2),
    "vgg13": lambda: plain_vgg([64, 64, _M, 128, 128, _M, 256, 256, _M] + [512, 512, _M] * 2),
    "vgg16": lambda: plain_vgg(
        [64, 64, _M, 128, 128, _M, 256, 256, 256, _M] + [512, 512, 512, _M] * 2
    ),
    "vgg19": lambda: plain_vgg(
        [64, 64, _M, 128, 128, _M, 256, 256, 256, 256, _M] + [512, 512, 512, 512, _M] * 2
    ),
    "alexnet": plain_alexnet,
}


def copy_weights(src: nn.Module, dst: nn.Module) -> None:
    """Copy tensors in registration order (both models declare layers in the same order)."""
    a, b = src.state_dict(), dst.state_dict()
    shapes_a = [tuple(v.shape) for v in a.values()]
    shapes_b = [tuple(v.shape) for v in b.values()]
    if shapes_a != shapes_b:
        raise RuntimeError("plain reference does not have the rlgen model's tensors in order")
    dst.load_state_dict(dict(zip(b.keys(), a.values())))


# ---------------------------------------------------------------- measurement




class Stepper:
    """One model in one setting: ``step()`` runs one timed forward or training step."""

    def __init__(self, model, mode, device, precision, channels_last, batch, size, compile_):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(device, memory_format=fmt)
        self.run = torch.compile(self.model) if compile_ else self.model
        self.mode, self.device, self.precision = mode, device, precision
        self.x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
        self.y = torch.randint(0, 1000, (batch,), device=device)
        if mode == "train":
            self.model.train()
            self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9)
            self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
        else:
            self.model.eval()

    def step(self) -> float:
        sync(self.device)
        t0 = time.perf_counter()
        if self.mode == "forward":
            with torch.inference_mode(), autocast(self.device, self.precision):
                self.run(self.x)
        else:
            self.opt.zero_grad(set_to_none=True)
            with autocast(self.device, self.precision):
                loss = F.cross_entropy(self.run(self.x), self.y)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        sync(self.device)
        return time.perf_counter() - t0


def build_pair(name: str, device: torch.device) -> tuple[nn.Module, nn.Module | None]:
    torch.manual_seed(0)
    model = create_model(name)
    if name not in PLAIN:
        return model, None
    plain = PLAIN[name]()
    copy_weights(model, plain)
    model.eval()
    plain.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        if not torch.allclose(model(x), plain(x), rtol=1e-4, atol=1e-4):
            raise RuntimeError(f"plain {name} does not compute the same function as rlgen's")
    return model, plain


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="resnet18", help="comma-separated create_model names")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--precision", default="32", help="comma-separated: 32,bf16-mixed,16-mixed")
    p.add_argument(
        "--memory-format", default="contiguous,channels_last",
        help="comma-separated: contiguous,channels_last",
    )  # fmt: skip
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--mode", default="forward,train", help="comma-separated: forward,train")
    p.add_argument("--iters", type=int, default=5, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (and compile)")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--no-plain", action="store_true", help="time rlgen's models only")
    p.add_argument(
        "--threads", type=int, default=None,
        help="torch CPU threads (default: torch's choice); 1 is steadier on a shared machine",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            p.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)

    models = [m for m in args.models.split(",") if m]
    precisions = args.precision.split(",")
    formats = args.memory_format.split(",")
    modes = args.mode.split(",")
    for value, allowed, flag in [
        (precisions, PRECISIONS, "--precision"),
        (formats, ("contiguous", "channels_last"), "--memory-format"),
        (modes, ("forward", "train"), "--mode"),
    ]:
        bad = [v for v in value if v not in allowed]
        if bad:
            p.error(f"{flag}: unknown {bad}; expected a comma-separated subset of {list(allowed)}")
    if args.iters < 1 or args.warmup < 0 or args.batch_size < 1:
        p.error("--iters and --batch-size must be >= 1, --warmup >= 0")
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")

    ratios: dict[str, dict[str, float]] = {}
    for name in models:
        model, plain = build_pair(name, device)
        impls = {"rlgen": model}
        if plain is not None and not args.no_plain:
            impls["plain"] = plain
        for precision in precisions:
            for fmt in formats:
                for mode in modes:
                    steppers = {
                        impl: Stepper(m, mode, device, precision, fmt == "channels_last",
                                      args.batch_size, args.image_size, args.compile)
                        for impl, m in impls.items()
                    }  # fmt: skip
                    for _ in range(args.warmup):
                        for s in steppers.values():
                            s.step()
                    times: dict[str, list[float]] = {impl: [] for impl in steppers}
                    for _ in range(args.iters):  # alternate, so drift hits both alike
                        for impl, s in steppers.items():
                            times[impl].append(s.step())
                    rate = {i: args.batch_size / statistics.median(t) for i, t in times.items()}
                    for impl, value in rate.items():
                        print(json.dumps({
                            "benchmark": "backbones",
                            "metric": f"{mode}_images_per_s",
                            "value": round(value, 3),
                            "unit": "images/s",
                            "model": name,
                            "impl": impl,
                            "precision": precision,
                            "memory_format": fmt,
                            "device": device.type,
                            "batch_size": args.batch_size,
                            "image_size": args.image_size,
                            "iters": args.iters,
                            "stat": "median step",
                            "compile": args.compile,
                            "threads": torch.get_num_threads(),
                        }), flush=True)  # fmt: skip
                    if "plain" in rate:
                        key = f"{mode}/{precision}/{fmt}"
                        ratios.setdefault(name, {})[key] = round(rate["rlgen"] / rate["plain"], 3)
        del model, plain, impls
    all_ratios = [r for per_model in ratios.values() for r in per_model.values()]
    print(json.dumps({
        "benchmark": "backbones",
        "metric": "summary",
        "value": round(statistics.geometric_mean(all_ratios), 3) if all_ratios else None,
        "unit": "rlgen/plain throughput (geometric mean)",
        "ratios": ratios,
        "no_plain_reference": [m for m in models if m not in PLAIN],
        "device": device.type,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
