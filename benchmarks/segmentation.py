"""Throughput and memory of rlgen's segmentation networks against the same architectures
written in plain PyTorch.

For each model, image size, precision and memory format it measures images/s for training
(forward + per-pixel cross-entropy + backward + SGD step) and for inference (``eval()`` under
``torch.inference_mode``), for the rlgen model (``build_segmentation_model``) and for a "plain"
reference defined in this file: the same layers written the most direct way (``nn.Sequential``
and short ``forward`` functions, no registry, no backbone contract, no input checks, no
padding to a multiple and cropping back, no stage bookkeeping). The comparison shows whether
rlgen's generality (encoders behind ``feature_info`` / ``forward_stages``, pad / crop, checks)
costs anything; the goal is a ratio of 1.0.

- ``fcn8s``: FCN-8s on VGG-16 (rlgen: the registry's trunk behind a 99-pixel ``F.pad``; plain:
  conv1_1 with padding 100, as in the Caffe / pytorch-fcn reference).
- ``segnet``: SegNet, VGG-16-BN encoder with pooling indices, max-unpooling decoder.
- ``unet``: the original U-Net (widths 64 ... 1024, transposed-conv upsampling, no batch norm).
- ``unet-resnet34``: the U-Net decoder (nearest upsampling, batch norm, 256 ... 16) on ResNet-34.

Before timing, each plain model must have exactly the rlgen model's parameter count (asserted),
its tensors in the same order and shapes; it receives the rlgen model's weights and must give
the same outputs (FCN's score layers, zero at initialisation, first get small random weights so
that the check is not 0 == 0). Both sides therefore compute the same function.

Timing: both implementations run alternately, step by step, in this one process, and the median
step is reported, so load from other processes on a shared machine hits both alike.

Memory, per step, above what was allocated when the step began (weights, optimiser state and
the other model are resident before it, so they are not counted; activations, gradients and
workspaces are), the largest over the timed steps:

- CUDA: ``torch.cuda.max_memory_allocated()`` (peak stats reset at each step's start) minus
  ``torch.cuda.memory_allocated()`` at the start.
- CPU (Linux): the process's peak resident set (``VmHWM`` in ``/proc/self/status``, reset to
  the current RSS through ``/proc/self/clear_refs`` at each step's start) minus its RSS then.
  Freed heap memory that glibc keeps would hide reuse, so on the CPU this script sets glibc's
  ``mmap`` / trim thresholds to ``--cpu-malloc-threshold-kb`` (default 1024: tensors of 1 MiB
  and more are mapped and returned to the system when freed), for both sides alike; 0 keeps
  glibc's defaults. Where ``clear_refs`` is not writable, ``resource.getrusage``'s
  ``ru_maxrss`` is used and a step that sets no new high-water mark reports null.
  Every record says which (``memory_source``).

Output: one JSON object per line per measurement (``{train,inference}_images_per_s`` per side,
``{train,inference}_peak_memory_mb`` per side, ``{train,inference}_rlgen_over_plain`` per
setting), a markdown table on stderr, then a summary line last: the geometric mean of the
rlgen / plain throughput ratios, the ratios, images/s and memory per model and setting.

    python benchmarks/segmentation.py          # CPU: batch 2, 256x256, fp32, contiguous, 2 steps
    python benchmarks/segmentation.py --device cuda    # 256 and 512, fp32 and bf16, both formats
    python benchmarks/segmentation.py --threads 1      # steadier on a CPU shared with other jobs
    python benchmarks/segmentation.py --models unet,segnet --precision 32,bf16-mixed \\
        --memory-format contiguous,channels_last --size 256,512 --batch-size 8 --steps 20
    python benchmarks/segmentation.py --quick                 # smoke test: U-Net, 64x64, 1 step
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from measure import PRECISIONS, autocast, parse_list, sync  # noqa: E402

from rlgen.vision.segmentation.models import build_segmentation_model  # noqa: E402

BENCH = "segmentation"
FORMATS = ("contiguous", "channels_last")
MODES = ("train", "inference")
SIZE_MULTIPLE = 32  # plain models take no padding: every size must suit FCN / SegNet as is


# ---------------------------------------------------------------- plain reference models


def conv_relu(cin: int, cout: int, bn: bool = False, padding: int = 1) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=padding)]
    return layers + ([nn.BatchNorm2d(cout)] if bn else []) + [nn.ReLU(inplace=True)]


def vgg16_blocks(bn: bool, first_padding: int = 1) -> list[nn.Sequential]:
    """VGG-16's five conv blocks (without their pools)."""
    widths = [[64, 64], [128, 128], [256] * 3, [512] * 3, [512] * 3]
    blocks, cin = [], 3
    for block in widths:
        layers: list[nn.Module] = []
        for w in block:
            layers += conv_relu(cin, w, bn, first_padding if cin == 3 else 1)
            cin = w
        blocks.append(nn.Sequential(*layers))
    return blocks


class PlainFCN8s(nn.Module):
    """FCN-8s as in the Caffe reference: conv1_1 padded by 100, fc6/fc7 as convs, 2x / 2x / 8x
    transposed-conv upsampling fused with pool4 / pool3 scores cropped at 5 / 9, final crop 31.
    """

    def __init__(self, k: int):
        super().__init__()
        b = vgg16_blocks(bn=False, first_padding=100)
        pool = nn.MaxPool2d(2, 2)
        self.to_pool3 = nn.Sequential(b[0], pool, b[1], pool, b[2], pool)
        self.to_pool4 = nn.Sequential(b[3], pool)
        self.to_pool5 = nn.Sequential(b[4], pool)
        self.fc = nn.Sequential(
            nn.Conv2d(512, 4096, 7), nn.ReLU(inplace=True), nn.Dropout(),
            nn.Conv2d(4096, 4096, 1), nn.ReLU(inplace=True), nn.Dropout(),
            nn.Conv2d(4096, k, 1),
        )  # fmt: skip
        self.score_pool4 = nn.Conv2d(512, k, 1)
        self.upscore2 = nn.ConvTranspose2d(k, k, 4, 2, bias=False)
        self.score_pool3 = nn.Conv2d(256, k, 1)
        self.upscore_pool4 = nn.ConvTranspose2d(k, k, 4, 2, bias=False)
        self.upscore8 = nn.ConvTranspose2d(k, k, 16, 8, bias=False)

    def forward(self, x):
        h, w = x.shape[-2:]
        p3 = self.to_pool3(x)
        p4 = self.to_pool4(p3)
        s = self.upscore2(self.fc(self.to_pool5(p4)))
        s = s + self.score_pool4(p4)[:, :, 5:5 + s.shape[2], 5:5 + s.shape[3]]
        s = self.upscore_pool4(s)
        s = s + self.score_pool3(p3)[:, :, 9:9 + s.shape[2], 9:9 + s.shape[3]]
        return self.upscore8(s)[:, :, 31:31 + h, 31:31 + w]


class PlainSegNet(nn.Module):
    """SegNet: VGG-16-BN blocks, max-pools keeping their indices, mirrored decoder."""

    def __init__(self, k: int):
        super().__init__()
        self.enc = nn.ModuleList(vgg16_blocks(bn=True))

        def cbr(*pairs):
            return nn.Sequential(*[m for i, o in pairs for m in conv_relu(i, o, bn=True)])

        self.dec = nn.ModuleList([
            cbr((512, 512), (512, 512), (512, 512)),
            cbr((512, 512), (512, 512), (512, 256)),
            cbr((256, 256), (256, 256), (256, 128)),
            cbr((128, 128), (128, 64)),
            nn.Sequential(*conv_relu(64, 64, bn=True), nn.Conv2d(64, k, 3, padding=1)),
        ])  # fmt: skip

    def forward(self, x):
        where, sizes = [], []
        for block in self.enc:
            x = block(x)
            sizes.append(x.shape[-2:])
            x, i = F.max_pool2d(x, 2, 2, return_indices=True)
            where.append(i)
        for block, i, size in zip(self.dec, reversed(where), reversed(sizes)):
            x = block(F.max_unpool2d(x, i, 2, 2, output_size=size))
        return x


def double_conv(cin: int, cout: int, bn: bool) -> nn.Sequential:
    def one(i):
        return [nn.Conv2d(i, cout, 3, padding=1, bias=not bn),
                *([nn.BatchNorm2d(cout)] if bn else []), nn.ReLU(inplace=True)]
    return nn.Sequential(*one(cin), *one(cout))


class PlainUNet(nn.Module):
    """The original U-Net (padded convs): 4 poolings, 2x2 up-convolutions, skip concatenation."""

    def __init__(self, k: int, base: int = 64):
        super().__init__()
        w = [base * 2**i for i in range(5)]
        self.down = nn.ModuleList([double_conv(3, w[0], False)]
                                  + [double_conv(w[i], w[i + 1], False) for i in range(4)])
        self.up = nn.ModuleList(
            nn.ModuleList([nn.ConvTranspose2d(w[i + 1], w[i], 2, 2), double_conv(2 * w[i], w[i],
                                                                                  False)])
            for i in reversed(range(4)))
        self.head = nn.Conv2d(w[0], k, 1)

    def forward(self, x):
        skips = []
        for i, block in enumerate(self.down):
            x = block(F.max_pool2d(x, 2) if i else x)
            skips.append(x)
        x = skips.pop()
        for up, convs in self.up:
            x = convs(torch.cat([skips.pop(), up(x)], 1))
        return self.head(x)


class PlainBasicBlock(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.short = None
        if stride != 1 or cin != planes:
            self.short = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.short is None else self.short(x)))


class PlainUNetResNet34(nn.Module):
    """ResNet-34, then per step up: nearest 2x, concatenate the skip, two conv-BN-ReLU."""

    def __init__(self, k: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(inplace=True))
        layers, cin = [], 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
            blocks = []
            for j in range(n):
                blocks.append(PlainBasicBlock(cin, planes, 2 if i and not j else 1))
                cin = planes
            layers.append(nn.Sequential(*blocks))
        self.layers = nn.ModuleList(layers)
        ins = [(512, 256), (256, 128), (128, 64), (64, 64), (32, 0)]
        outs = [256, 128, 64, 32, 16]
        self.dec = nn.ModuleList(double_conv(a + s, o, True) for (a, s), o in zip(ins, outs))
        self.head = nn.Conv2d(16, k, 1)

    def forward(self, x):
        skips = [self.stem(x)]
        x = F.max_pool2d(skips[0], 3, 2, 1)
        for layer in self.layers:
            x = layer(x)
            skips.append(x)
        x = skips.pop()
        for block in self.dec:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = block(torch.cat([skips.pop(), x], 1) if skips else x)
        return self.head(x)


# name -> (rlgen builder, plain builder), both taking the number of classes and the original
# U-Net's first-level width (which only "unet" uses)
Builder = Callable[[int, int], nn.Module]
MODELS: dict[str, tuple[Builder, Builder]] = {
    "fcn8s": (lambda k, w: build_segmentation_model("fcn8s", k), lambda k, w: PlainFCN8s(k)),
    "segnet": (lambda k, w: build_segmentation_model("segnet", k),
               lambda k, w: PlainSegNet(k)),
    "unet": (lambda k, w: build_segmentation_model("unet", k, base_channels=w), PlainUNet),
    "unet-resnet34": (lambda k, w: build_segmentation_model("unet", k, encoder="resnet34"),
                      lambda k, w: PlainUNetResNet34(k)),
}


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def copy_weights(src: nn.Module, dst: nn.Module) -> None:
    """Copy tensors in registration order (both models declare layers in the same order), and
    which parameters are frozen (FCN's final bilinear upsampling)."""
    a, b = src.state_dict(), dst.state_dict()
    if [tuple(v.shape) for v in a.values()] != [tuple(v.shape) for v in b.values()]:
        raise RuntimeError("plain reference does not have the rlgen model's tensors in order")
    dst.load_state_dict(dict(zip(b.keys(), a.values())))
    for p, q in zip(src.parameters(), dst.parameters()):
        q.requires_grad_(p.requires_grad)


def build_pair(name: str, num_classes: int, check_size: int, unet_width: int = 64
               ) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    rlgen_builder, plain_builder = MODELS[name]
    model = rlgen_builder(num_classes, unet_width)
    plain = plain_builder(num_classes, unet_width)
    n, m = num_params(model), num_params(plain)
    assert n == m, f"{name}: plain reference has {m:,} parameters, rlgen's model {n:,}"
    with torch.no_grad():  # zero-initialised layers (FCN's scores) would make the check 0 == 0
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.01)
    copy_weights(model, plain)
    model.eval()
    plain.eval()
    x = torch.randn(1, 3, check_size, check_size)
    with torch.no_grad():
        a, b = model(x), plain(x)
    err = float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))
    if a.shape != b.shape or not err < 1e-4:
        raise RuntimeError(f"plain {name} does not compute the same function as rlgen's "
                           f"({tuple(a.shape)} vs {tuple(b.shape)}, relative error {err:.2e})")
    return model, plain


# ---------------------------------------------------------------- memory


def tune_malloc(threshold_kb: int) -> bool:
    """glibc: map allocations of ``threshold_kb`` and more, and trim freed heap above it, so that
    freed tensors leave the resident set (peak RSS deltas then measure a step's own peak)."""
    if threshold_kb <= 0 or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, threshold_kb * 1024)
                and libc.mallopt(m_trim_threshold, threshold_kb * 1024))


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class PeakMemory:
    """A step's peak memory above what was allocated at its start, in MiB (see the docstring)."""

    def __init__(self, device: torch.device, malloc_tuned: bool):
        self.device = device
        if device.type == "cuda":
            self.source = "torch.cuda.max_memory_allocated - memory_allocated at step start"
            return
        self.clear_refs = False
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            _status_kib("VmHWM")
            self.clear_refs = True
            self.source = "peak RSS (VmHWM, reset via /proc/self/clear_refs) - RSS at step start"
        except (OSError, KeyError):
            self.source = "resource ru_maxrss - RSS at step start (null: no new high-water mark)"
        self.source += ("; glibc mmap/trim threshold lowered" if malloc_tuned
                        else "; glibc malloc defaults")

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.clear_refs:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.base = _status_kib("VmRSS") * 1024
        else:
            self.base = _rss_bytes()
            self.high = _maxrss_bytes()

    def stop(self) -> float | None:
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.clear_refs:
            peak = _status_kib("VmHWM") * 1024
        else:
            peak = _maxrss_bytes()
            if peak <= self.high:
                return None
        return max(peak - self.base, 0) / 2**20


def _maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def _rss_bytes() -> int:
    try:
        return _status_kib("VmRSS") * 1024
    except (OSError, KeyError):
        return _maxrss_bytes()


# ---------------------------------------------------------------- measurement




class Stepper:
    """One model in one setting: ``step()`` runs one timed training or inference step."""

    def __init__(self, model, mode, device, precision, channels_last, batch, size, classes,
                 compile_):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(device, memory_format=fmt)
        self.run = torch.compile(self.model) if compile_ else self.model
        self.mode, self.device, self.precision = mode, device, precision
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(batch, 3, size, size, generator=g).to(device, memory_format=fmt)
        self.y = torch.randint(0, classes, (batch, size, size), generator=g).to(device)
        if mode == "train":
            self.model.train()
            params = [p for p in self.model.parameters() if p.requires_grad]
            self.opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9)
            self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
        else:
            self.model.eval()

    def step(self) -> float:
        sync(self.device)
        t0 = time.perf_counter()
        if self.mode == "inference":
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



def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default=None,
                   help=f"comma-separated: {','.join(MODELS)} (default: all)")
    p.add_argument("--size", default=None,
                   help="comma-separated square image sizes, multiples of 32 "
                        "(default: 256 on the CPU, 256,512 on CUDA)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per step (default: 2 on the CPU, 8 on CUDA)")
    p.add_argument("--num-classes", type=int, default=21, help="output classes (VOC's 21)")
    p.add_argument("--unet-width", type=int, default=None,
                   help="the original U-Net's first-level channels (default: the paper's 64)")
    p.add_argument("--precision", default=None,
                   help="comma-separated: 32,bf16-mixed,16-mixed "
                        "(default: 32 on the CPU, 32,bf16-mixed on CUDA)")
    p.add_argument("--memory-format", default=None,
                   help="comma-separated: contiguous,channels_last (default: contiguous on "
                        "the CPU, both on CUDA)")
    p.add_argument("--mode", default="train,inference", help="comma-separated: train,inference")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per side and setting (default: 2 on the CPU, 20 on CUDA)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps per side first (default: 1 on the CPU, 5 on CUDA)")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice)")
    p.add_argument("--cpu-malloc-threshold-kb", type=int, default=1024,
                   help="CPU: glibc mmap / trim threshold for the memory figures (0: glibc's "
                        "defaults)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: unet of width 16, 64x64, batch 1, 1 warm-up and 1 timed "
                        "step, fp32, contiguous (explicit flags still apply)")
    args = p.parse_args(argv)

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    gpu = device.type == "cuda"
    # attribute: (CUDA default, CPU default, --quick default); explicit flags always win
    defaults = {"models": ("fcn8s,segnet,unet,unet-resnet34",) * 2 + ("unet",),
                "size": ("256,512", "256", "64"), "batch_size": (8, 2, 1),
                "steps": (20, 2, 1), "warmup": (5, 1, 1),
                "precision": ("32,bf16-mixed", "32", "32"),
                "memory_format": ("contiguous,channels_last", "contiguous", "contiguous"),
                "unet_width": (64, 64, 16)}
    for attr, (on_gpu, on_cpu, quick) in defaults.items():
        if getattr(args, attr) is None:
            setattr(args, attr, quick if args.quick else on_gpu if gpu else on_cpu)

    models = parse_list(p, args.models, MODELS, "--models")
    precisions = parse_list(p, args.precision, PRECISIONS, "--precision")
    formats = parse_list(p, args.memory_format, FORMATS, "--memory-format")
    modes = parse_list(p, args.mode, MODES, "--mode")
    try:
        sizes = [int(s) for s in str(args.size).split(",") if s]
    except ValueError:
        p.error(f"--size takes comma-separated integers, got {args.size!r}")
    if not sizes or any(s < SIZE_MULTIPLE or s % SIZE_MULTIPLE for s in sizes):
        p.error(f"--size: every size must be a multiple of {SIZE_MULTIPLE} (>= "
                f"{SIZE_MULTIPLE}), got {args.size!r}")
    if min(args.steps, args.batch_size, args.num_classes, args.unet_width) < 1 or args.warmup < 0:
        p.error("--steps, --batch-size, --num-classes and --unet-width must be >= 1, "
                "--warmup >= 0")
    if args.threads is not None:
        if args.threads < 1:
            p.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    memory = PeakMemory(device, not gpu and tune_malloc(args.cpu_malloc_threshold_kb))

    common = {"device": device.type, "batch_size": args.batch_size,
              "num_classes": args.num_classes, "compile": args.compile,
              "threads": torch.get_num_threads()}
    ratios: dict[str, dict[str, float]] = {}
    rates: dict[str, dict[str, dict[str, float]]] = {}
    peaks: dict[str, dict[str, dict[str, float | None]]] = {}
    params: dict[str, int] = {}
    rows: list[str] = []
    for name in models:
        model, plain = build_pair(name, args.num_classes, min(sizes), args.unet_width)
        params[name] = num_params(model)
        impls = {"rlgen": model, "plain": plain}
        for size in sizes:
            for precision in precisions:
                for fmt in formats:
                    for mode in modes:
                        steppers = {
                            impl: Stepper(m, mode, device, precision, fmt == "channels_last",
                                          args.batch_size, size, args.num_classes, args.compile)
                            for impl, m in impls.items()
                        }  # fmt: skip
                        for _ in range(args.warmup):
                            for s in steppers.values():
                                s.step()
                        times: dict[str, list[float]] = {impl: [] for impl in steppers}
                        mem: dict[str, list[float]] = {impl: [] for impl in steppers}
                        for _ in range(args.steps):  # alternate, so drift hits both alike
                            for impl, s in steppers.items():
                                memory.start()
                                times[impl].append(s.step())
                                peak = memory.stop()
                                if peak is not None:
                                    mem[impl].append(peak)
                        settings = {"model": name, "precision": precision,
                                    "memory_format": fmt, "image_size": size,
                                    **({"unet_width": args.unet_width} if name == "unet"
                                       else {})}
                        key = f"{mode}/{size}/{precision}/{fmt}"
                        rate, peak_mb = {}, {}
                        for impl in steppers:
                            rate[impl] = args.batch_size / statistics.median(times[impl])
                            peak_mb[impl] = round(max(mem[impl]), 1) if mem[impl] else None
                            print(json.dumps({
                                "benchmark": BENCH, "metric": f"{mode}_images_per_s",
                                "value": round(rate[impl], 3), "unit": "images/s",
                                "impl": impl, **settings, **common, "steps": args.steps,
                                "warmup": args.warmup, "stat": "median step",
                                "params": params[name],
                            }), flush=True)  # fmt: skip
                            print(json.dumps({
                                "benchmark": BENCH, "metric": f"{mode}_peak_memory_mb",
                                "value": peak_mb[impl], "unit": "MiB", "impl": impl,
                                **settings, **common, "stat": "max over timed steps",
                                "memory_source": memory.source,
                            }), flush=True)  # fmt: skip
                        ratio = round(rate["rlgen"] / rate["plain"], 3)
                        print(json.dumps({
                            "benchmark": BENCH, "metric": f"{mode}_rlgen_over_plain",
                            "value": ratio, "unit": "ratio of images/s (1.0 = no overhead)",
                            **settings, **common,
                            "rlgen_images_per_s": round(rate["rlgen"], 3),
                            "plain_images_per_s": round(rate["plain"], 3),
                            "rlgen_peak_memory_mb": peak_mb["rlgen"],
                            "plain_peak_memory_mb": peak_mb["plain"],
                        }), flush=True)  # fmt: skip
                        ratios.setdefault(name, {})[key] = ratio
                        rates.setdefault(name, {})[key] = {
                            i: round(r, 3) for i, r in rate.items()}
                        peaks.setdefault(name, {})[key] = peak_mb
                        rows.append(
                            f"| {name} | {mode} | {size} | {precision} | {fmt} | "
                            f"{rate['rlgen']:.2f} | {rate['plain']:.2f} | {ratio:.3f} | "
                            f"{_mb(peak_mb['rlgen'])} | {_mb(peak_mb['plain'])} |")
                        del steppers
        del model, plain, impls
        if gpu:
            torch.cuda.empty_cache()

    print("| model | mode | size | precision | memory format | rlgen img/s | plain img/s "
          "| rlgen/plain | rlgen MiB | plain MiB |", file=sys.stderr)
    print("|---|---|---|---|---|---|---|---|---|---|", file=sys.stderr)
    print("\n".join(rows), file=sys.stderr, flush=True)
    all_ratios = [r for per_model in ratios.values() for r in per_model.values()]
    print(json.dumps({
        "benchmark": BENCH, "metric": "summary",
        "value": round(statistics.geometric_mean(all_ratios), 3) if all_ratios else None,
        "unit": "rlgen/plain throughput (geometric mean)",
        "ratios": ratios, "images_per_s": rates, "peak_memory_mb": peaks, "params": params,
        "memory_source": memory.source, "sizes": sizes, "unet_width": args.unet_width,
        "steps": args.steps, "warmup": args.warmup, **common,
    }))  # fmt: skip


def _mb(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.0f}"


if __name__ == "__main__":
    main()
