"""Training and sampling throughput of rlgen's DCGAN (and VAE) against a plain DCGAN.

The "plain" DCGAN is written here the way pytorch/examples' ``dcgan/main.py`` writes it:
``nn.Sequential`` generator and discriminator with a final ``nn.Sigmoid``, ``nn.BCELoss``, the
same N(0, 0.02) initialization, Adam (2e-4, betas 0.5 / 0.999), and its training step (two
discriminator backward passes, then the generator's through a discriminator whose weight
gradients are computed and thrown away). Both implementations get the same synthetic batches,
so only the compute is compared.

Sampling is timed three ways for the plain generator: ``autograd`` (``netG(noise)`` in train
mode, as pytorch/examples' loop makes its sample grids) and ``inference`` (eval mode under
``torch.inference_mode``, the way FACTS.md's 400-425 images/s was measured); rlgen's is
``model.sample(n)`` (batch norm folded into the convolutions, channels_last), plus variants that
show what each choice is worth.

Measurements alternate between implementations in ``--rounds`` rounds (each round times every
candidate once, back to back) and report the median round; speedups are medians of per-round
ratios, so a machine whose load drifts (a shared one) still compares like with like. Each line
also gives images per CPU-second of this process, which competing processes barely move.

    python benchmarks/generative.py --model dcgan --image-size 64 --batch-size 64 --steps 1
    python benchmarks/generative.py --model vae --image-size 64 --steps 5 --device cuda

Prints one JSON object per line and a ``"metric": "summary"`` line last.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlgen.generative.dcgan import DCGAN, fold_batch_norm, train_step  # noqa: E402
from rlgen.runtime import Precision, resolve_device  # noqa: E402

BENCH = "generative"

# --------------------------------------------------------------------------------------------
# The plain pytorch/examples-style DCGAN (64x64 as in its main.py; 32x32 drops one layer)
# --------------------------------------------------------------------------------------------


def _plain_weights_init(m: nn.Module) -> None:
    name = m.__class__.__name__
    if "Conv" in name:
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif "BatchNorm" in name:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.constant_(m.bias, 0)


def plain_generator(nz: int, ngf: int, nc: int, image_size: int) -> nn.Sequential:
    ups = {32: 3, 64: 4}[image_size]
    ch = ngf * 2 ** (ups - 1)
    layers: list[nn.Module] = [
        nn.ConvTranspose2d(nz, ch, 4, 1, 0, bias=False),
        nn.BatchNorm2d(ch),
        nn.ReLU(True),
    ]
    for _ in range(ups - 1):
        layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False),
                   nn.BatchNorm2d(ch // 2), nn.ReLU(True)]  # fmt: skip
        ch //= 2
    layers += [nn.ConvTranspose2d(ch, nc, 4, 2, 1, bias=False), nn.Tanh()]
    net = nn.Sequential(*layers)
    net.apply(_plain_weights_init)
    return net


def plain_discriminator(ndf: int, nc: int, image_size: int) -> nn.Sequential:
    stages = {32: 3, 64: 4}[image_size]
    layers: list[nn.Module] = [nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
    ch = ndf
    for _ in range(stages - 1):
        layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch * 2),
                   nn.LeakyReLU(0.2, True)]  # fmt: skip
        ch *= 2
    layers += [nn.Conv2d(ch, 1, 4, 1, 0, bias=False), nn.Sigmoid()]
    net = nn.Sequential(*layers)
    net.apply(_plain_weights_init)
    return net


class PlainDCGAN:
    """pytorch/examples' training iteration, line for line (without its .item() prints)."""

    def __init__(self, nz: int, nc: int, image_size: int, device: torch.device):
        self.nz, self.device = nz, device
        self.netG = plain_generator(nz, 64, nc, image_size).to(device)
        self.netD = plain_discriminator(64, nc, image_size).to(device)
        self.criterion = nn.BCELoss()
        self.optD = torch.optim.Adam(self.netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.optG = torch.optim.Adam(self.netG.parameters(), lr=2e-4, betas=(0.5, 0.999))

    def step(self, real: torch.Tensor) -> None:
        b = real.size(0)
        self.netD.zero_grad()
        label = torch.full((b,), 1.0, device=self.device)
        output = self.netD(real).view(-1)
        self.criterion(output, label).backward()
        noise = torch.randn(b, self.nz, 1, 1, device=self.device)
        fake = self.netG(noise)
        label.fill_(0.0)
        output = self.netD(fake.detach()).view(-1)
        self.criterion(output, label).backward()
        self.optD.step()
        self.netG.zero_grad()
        label.fill_(1.0)
        output = self.netD(fake).view(-1)
        self.criterion(output, label).backward()
        self.optG.step()


# --------------------------------------------------------------------------------------------
# Timing helpers
# --------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(
    fn: Callable[[], None], calls: int, images_per_call: int, device: torch.device
) -> tuple[float, float]:
    """(images per wall-clock second, images per CPU-second of this process) over ``calls``.

    CPU time barely moves when other processes compete for the cores; wall time does.
    """
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(calls):
        fn()
    _sync(device)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return calls * images_per_call / wall, calls * images_per_call / max(cpu, 1e-9)


def emit(**record) -> None:
    print(json.dumps({"benchmark": BENCH, **record}), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("dcgan", "vae"), default="dcgan")
    parser.add_argument("--image-size", type=int, default=64, choices=(32, 64))
    parser.add_argument("--channels", type=int, default=3, help="image channels (3: RGB)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1, help="timed training steps per round")
    parser.add_argument(
        "--sample-batches",
        type=int,
        default=2,
        help="timed sampling batches (of --batch-size) per round",
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps / batches first")
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="rounds alternating the implementations; the median is reported",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto")
    parser.add_argument(
        "--precision",
        default="32",
        choices=("32", "16-mixed", "bf16-mixed"),
        help="rlgen's precision (the plain DCGAN always runs fp32)",
    )
    parser.add_argument(
        "--channels-last",
        action="store_true",
        help="train rlgen's model in channels_last only (default: time both)",
    )
    parser.add_argument("--impl", choices=("both", "rlgen", "plain"), default="both")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.sample_batches < 1 or args.rounds < 1 or args.batch_size < 2:
        parser.error("--steps, --sample-batches, --rounds must be >= 1, --batch-size >= 2")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    settings = {
        "model": args.model, "image_size": args.image_size, "batch_size": args.batch_size,
        "device": str(device), "threads": torch.get_num_threads(),
    }  # fmt: skip
    b, nz = args.batch_size, 100
    real = torch.rand(b, args.channels, args.image_size, args.image_size, device=device) * 2 - 1
    formats = [True] if args.channels_last else [False, True]

    # -- the candidates: name -> (kind, settings, callable) ------------------------------------
    train_fns: dict[str, tuple[dict, Callable[[], None]]] = {}
    sample_fns: dict[str, tuple[dict, Callable[[], None]]] = {}
    if args.model == "dcgan":
        if args.impl in ("both", "plain"):
            plain = PlainDCGAN(nz, args.channels, args.image_size, device)
            train_fns["plain"] = ({"impl": "plain", "precision": "32", "channels_last": False},
                                  lambda: plain.step(real))  # fmt: skip
            noise = torch.randn(b, nz, 1, 1, device=device)
            plain_g_eval = plain_generator(nz, 64, args.channels, args.image_size).to(device)
            plain_g_eval.load_state_dict(plain.netG.state_dict())
            plain_g_eval.eval()

            def plain_autograd() -> None:
                plain.netG(noise).detach()

            def plain_inference() -> None:
                with torch.inference_mode():
                    plain_g_eval(noise)

            sample_fns["plain/autograd"] = ({"impl": "plain", "mode": "autograd"}, plain_autograd)
            sample_fns["plain/inference"] = (
                {"impl": "plain", "mode": "inference"},
                plain_inference,
            )
        if args.impl in ("both", "rlgen"):
            for cl in formats:
                model = DCGAN(100, args.channels, args.image_size).to(device)
                if cl:
                    model = model.to(memory_format=torch.channels_last)
                G, D = model.generator, model.discriminator
                opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
                opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
                pg, pd = Precision(args.precision, device), Precision(args.precision, device)
                x = real.contiguous(memory_format=torch.channels_last) if cl else real

                def rl_step(G=G, D=D, x=x, opt_g=opt_g, opt_d=opt_d, pg=pg, pd=pd) -> None:
                    train_step(G, D, x, opt_g, opt_d, pg, pd, nz)

                train_fns[f"rlgen/cl={cl}"] = (
                    {"impl": "rlgen", "precision": args.precision, "channels_last": cl},
                    rl_step,
                )
            sampler = DCGAN(100, args.channels, args.image_size).to(device).eval()
            sample_fns["rlgen"] = (
                {"impl": "rlgen", "mode": "sample()", "variant": "bn_folded+channels_last"},
                lambda: sampler.sample(b, batch_size=b, device=device),
            )
            # What each choice is worth: the folded net in NCHW, the unfolded net in NHWC.
            z = torch.randn(b, nz, 1, 1, device=device)
            folded_nchw = fold_batch_norm(sampler.generator.main)
            unfolded_nhwc = DCGAN(100, args.channels, args.image_size).to(device).eval()
            unfolded_nhwc.generator.to(memory_format=torch.channels_last)

            def run_folded_nchw() -> None:
                with torch.inference_mode():
                    folded_nchw(z)

            def run_unfolded_nhwc() -> None:
                with torch.inference_mode():
                    unfolded_nhwc.generator(z)

            sample_fns["rlgen/folded_nchw"] = (
                {"impl": "rlgen", "mode": "inference", "variant": "bn_folded+contiguous"},
                run_folded_nchw,
            )
            sample_fns["rlgen/unfolded_nhwc"] = (
                {"impl": "rlgen", "mode": "inference", "variant": "bn+channels_last"},
                run_unfolded_nhwc,
            )
    else:  # the VAE: rlgen only (pytorch/examples' VAE is an MLP, not comparable)
        from rlgen.generative.vae import VAE

        x01 = real.add(1).mul(0.5)
        for cl in formats:
            vae = VAE((args.channels, args.image_size, args.image_size), 20).to(device)
            if cl:
                vae = vae.to(memory_format=torch.channels_last)
            opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
            prec = Precision(args.precision, device)
            xin = x01.contiguous(memory_format=torch.channels_last) if cl else x01

            def vae_step(vae=vae, opt=opt, prec=prec, xin=xin) -> None:
                xb = vae.binarize_input(xin)
                with prec.autocast():
                    logits, mu, logvar = vae(xb)
                recon, kl = vae.loss_terms(xb, logits, mu, logvar)
                opt.zero_grad(set_to_none=True)
                prec.step(recon + kl, opt)

            train_fns[f"rlgen/cl={cl}"] = (
                {"impl": "rlgen", "precision": args.precision, "channels_last": cl},
                vae_step,
            )
            sample_fns[f"rlgen/cl={cl}"] = (
                {"impl": "rlgen", "mode": "sample()", "channels_last": cl},
                lambda v=vae: v.sample(b, batch_size=b, device=device),
            )

    # -- measure, alternating ---------------------------------------------------------------
    # Each round times every candidate once, back to back, so a change of the machine's load
    # hits all of them alike; speedups are medians of the per-round ratios.
    rates: dict[str, list[tuple[float, float]]] = {}
    for kind, fns, calls in (("train", train_fns, args.steps),
                             ("sample", sample_fns, args.sample_batches)):  # fmt: skip
        for _, fn in fns.values():
            for _ in range(args.warmup):
                fn()
        for _ in range(args.rounds):
            for name, (_, fn) in fns.items():
                rates.setdefault(f"{kind}:{name}", []).append(rate(fn, calls, b, device))

    for kind, fns in (("train", train_fns), ("sample", sample_fns)):
        for name, (extra, _) in fns.items():
            wall = [r[0] for r in rates[f"{kind}:{name}"]]
            cpu = [r[1] for r in rates[f"{kind}:{name}"]]
            emit(metric=f"{kind}_images_per_s", value=round(statistics.median(wall), 2),
                 unit="images/s", **settings, **extra,
                 images_per_cpu_s=round(statistics.median(cpu), 2),
                 rounds=[round(w, 2) for w in wall])  # fmt: skip

    def speedup(a: str, b: str, which: int = 0) -> float | None:
        if a not in rates or b not in rates:
            return None
        ratios = [x[which] / y[which] for x, y in zip(rates[a], rates[b])]
        return round(statistics.median(ratios), 3)

    def median_rate(key: str) -> float | None:
        return round(statistics.median(r[0] for r in rates[key]), 2) if key in rates else None

    summary: dict[str, object] = {"metric": "summary", **settings, "precision": args.precision}
    summary["plain_train_images_per_s"] = median_rate("train:plain")
    for cl in formats:
        fmt = "channels_last" if cl else "contiguous"
        key = f"train:rlgen/cl={cl}"
        summary[f"rlgen_train_images_per_s_{fmt}"] = median_rate(key)
        summary[f"train_speedup_vs_plain_{fmt}"] = speedup(key, "train:plain")
        summary[f"train_speedup_vs_plain_{fmt}_cpu_time"] = speedup(key, "train:plain", 1)
    summary["rlgen_sample_images_per_s"] = median_rate("sample:rlgen")
    for cl in formats:  # the VAE's sampling, per memory format
        fmt = "channels_last" if cl else "contiguous"
        summary[f"rlgen_sample_images_per_s_{fmt}"] = median_rate(f"sample:rlgen/cl={cl}")
    for mode in ("inference", "autograd"):
        summary[f"plain_sample_images_per_s_{mode}"] = median_rate(f"sample:plain/{mode}")
        summary[f"sample_speedup_vs_plain_{mode}"] = speedup("sample:rlgen", f"sample:plain/{mode}")
        summary[f"sample_speedup_vs_plain_{mode}_cpu_time"] = speedup(
            "sample:rlgen", f"sample:plain/{mode}", 1
        )
    summary = {k: v for k, v in summary.items() if v is not None}
    emit(**summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
