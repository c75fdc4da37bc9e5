"""Throughput of rlgen's caption model (NIC: CNN encoder + LSTM / GRU decoder) against the same
encoder-decoder written in plain PyTorch.

Two figures per precision, for each implementation:

- ``train_captions_per_s``: one training step on a batch of (image, caption) pairs: forward
  under teacher forcing, the mean cross-entropy per real word, backward, Adam. Captions have
  random lengths (``--min-words`` .. ``--max-words`` words, plus ``<start>`` / ``<end>``), as a
  batch of COCO captions does.
- ``beam_images_per_s``: beam search (``--beam-size``, at most ``--max-length`` words) over a
  batch of images, the model in ``eval()`` under ``torch.no_grad``.

rlgen's side is ``build_caption_model`` (any registered backbone behind the backbone contract,
packed sequences so padding costs nothing, ``caption_loss``, the generic batched
``beam_search_decode`` behind a step function). The "plain" side is defined in this file, the
most direct way: the same CNN as ``nn.Sequential`` modules (ResNet-18 / 50 in torchvision's
layout, or mnist_deep), average pooling, a linear projection and batch norm, ``nn.Embedding``,
``nn.LSTM`` / ``nn.GRU`` over the whole padded batch (the image vector concatenated before the
words), ``F.cross_entropy(ignore_index=<pad>)``, and a beam search written inline on the LSTM
(the same rules: finished captions leave the beam, the same stop once no open caption can win).

Before timing, the plain model must have exactly the rlgen model's parameter count (asserted),
its tensors in the same order and shapes; it receives the rlgen model's weights, and both must
give the same logits on the real positions, the same loss, and the same beam-search captions
with the same log-probabilities. Both sides therefore compute the same function.

Timing: both implementations run alternately, step by step, in this one process, and the
median step is reported, so load from other processes on a shared machine hits both alike.
On CUDA, ``16-mixed`` uses a gradient scaler as the trainer does. A setting that fails (on a
CPU without bf16 support, oneDNN has no bf16 LSTM kernel for an unpacked sequence) prints its
ratio record with ``"value": null`` and the error, and the script goes on.

Output: one JSON object per line per measurement (``{train,beam}_..._per_s`` per side and the
``{train,beam}_rlgen_over_plain`` ratio per setting), a markdown table on stderr, then a summary
line last: the geometric mean of the ratios, the ratios and the rates.

    python benchmarks/captioning.py                 # CPU: resnet18, 128 px, batch 8, fp32
    python benchmarks/captioning.py --device cuda   # resnet50, 224 px, batch 64, 32 / 16-mixed
                                                    # / bf16-mixed
    python benchmarks/captioning.py --precision 32,bf16-mixed --threads 1   # bf16 on the CPU
    python benchmarks/captioning.py --encoder resnet50 --rnn gru --image-size 224 \\
        --batch-size 32 --steps 20
    python benchmarks/captioning.py --quick         # smoke test: mnist_deep, 32 px, tiny sizes
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from measure import PRECISIONS, autocast, parse_list, sync  # noqa: E402

from rlgen.vision.captioning.model import build_caption_model, caption_loss  # noqa: E402
from rlgen.vision.captioning.vocab import END_INDEX, PAD_INDEX, START_INDEX  # noqa: E402

BENCH = "captioning"
MODES = ("train", "beam")
UNITS = {"train": "captions/s", "beam": "images/s"}


# ---------------------------------------------------------------- plain reference model


class PlainBlock(nn.Module):
    """A ResNet block in torchvision's layout (v1.5: a bottleneck strides in its 3x3 conv)."""

    def __init__(self, cin: int, planes: int, stride: int, bottleneck: bool):
        super().__init__()
        out = planes * (4 if bottleneck else 1)
        if bottleneck:
            self.conv1, self.bn1 = nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3, self.bn3 = nn.Conv2d(planes, out, 1, bias=False), nn.BatchNorm2d(out)
        else:
            self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False), \
                nn.BatchNorm2d(planes)
            self.conv3 = None
        self.downsample = None
        if stride != 1 or cin != out:
            self.downsample = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False),
                                            nn.BatchNorm2d(out))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.conv3 is not None:
            y = self.bn3(self.conv3(F.relu(y)))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


def plain_resnet(layers: tuple[int, ...], bottleneck: bool) -> nn.Sequential:
    """ResNet without its head: stem, max pool, four stages; (N, 3, H, W) -> (N, C, H/32, W/32)."""
    mods: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                             nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
        stage = []
        for j in range(blocks):
            stage.append(PlainBlock(cin, planes, 2 if i and not j else 1, bottleneck))
            cin = planes * (4 if bottleneck else 1)
        mods.append(nn.Sequential(*stage))
    return nn.Sequential(*mods)


def plain_mnist_deep() -> nn.Sequential:
    """Two blocks of two 3x3 'same' convs + ReLU and a 2x2 max pool, 32 then 64 maps."""
    def conv(i, o):
        return [nn.Conv2d(i, o, 3, padding=1), nn.ReLU(inplace=True)]
    return nn.Sequential(*conv(3, 32), *conv(32, 32), nn.MaxPool2d(2),
                         *conv(32, 64), *conv(64, 64), nn.MaxPool2d(2))


PLAIN_CNNS = {
    "resnet18": (lambda: plain_resnet((2, 2, 2, 2), False), 512),
    "resnet34": (lambda: plain_resnet((3, 4, 6, 3), False), 512),
    "resnet50": (lambda: plain_resnet((3, 4, 6, 3), True), 2048),
    "mnist_deep": (plain_mnist_deep, 64),
}


class PlainNIC(nn.Module):
    """CNN -> mean over positions -> linear -> batch norm = the image vector, fed once before
    ``<start>`` and the words; an LSTM / GRU over the padded batch; a linear layer to words."""

    def __init__(self, encoder: str, vocab: int, embed: int, hidden: int, rnn: str):
        super().__init__()
        self.register_buffer("mean", torch.zeros(3))  # input standardisation (identity here)
        self.register_buffer("std", torch.ones(3))
        build, channels = PLAIN_CNNS[encoder]
        self.cnn = build()
        self.proj = nn.Linear(channels, embed)
        self.norm = nn.BatchNorm1d(embed)
        self.embed = nn.Embedding(vocab, embed, padding_idx=PAD_INDEX)
        self.rnn = (nn.LSTM if rnn == "lstm" else nn.GRU)(embed, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, vocab)

    def encode(self, images):
        x = (images - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)
        return self.norm(self.proj(self.cnn(x).mean((2, 3))))

    def forward(self, images, captions):
        """Logits (B, T - 1, V) for the targets captions[:, 1:] (padding positions included)."""
        words = self.embed(captions[:, :-1])
        out, _ = self.rnn(torch.cat([self.encode(images)[:, None], words], 1))
        return self.fc(out[:, 1:])

    @torch.no_grad()
    def beam_search(self, images, k: int, max_length: int):
        """Per image, the best caption (ids without <start> / <end>) and its log-probability."""
        b = images.shape[0]
        _, state = self.rnn(self.encode(images)[:, None])
        if isinstance(state, tuple):
            state = tuple(s.repeat_interleave(k, 1) for s in state)
        else:
            state = state.repeat_interleave(k, 1)
        tokens = torch.full((b * k,), START_INDEX, device=images.device)
        beam_lp = torch.full((b, k), -math.inf, dtype=torch.float64, device=images.device)
        beam_lp[:, 0] = 0
        history = torch.full((b, k, max_length), PAD_INDEX, device=images.device)
        best_lp = torch.full((b,), -math.inf, dtype=torch.float64, device=images.device)
        best = torch.full((b, max_length), PAD_INDEX, device=images.device)
        first = (torch.arange(b, device=images.device) * k)[:, None]
        for t in range(max_length):
            out, state = self.rnn(self.embed(tokens)[:, None], state)
            lp = F.log_softmax(self.fc(out[:, 0]).float(), -1)
            lp[:, [PAD_INDEX, START_INDEX]] = -math.inf
            vocab = lp.shape[1]
            top_lp, top = (beam_lp[:, :, None] + lp.view(b, k, vocab).double()).view(b, -1).topk(k)
            source, word = top // vocab, top % vocab
            history = history.gather(1, source[..., None].expand(-1, -1, max_length))
            history[:, :, t] = word
            # finished: ended with <end> now, or every open caption once out of room
            done = word == END_INDEX if t < max_length - 1 else torch.ones_like(word, dtype=bool)
            done_lp = top_lp.masked_fill(~done, -math.inf)
            new_lp, at = done_lp.max(1)
            better = new_lp > best_lp
            best_lp = torch.where(better, new_lp, best_lp)
            best = torch.where(better[:, None], history[torch.arange(b), at], best)
            beam_lp = top_lp.masked_fill(done, -math.inf)
            if bool((best_lp >= beam_lp.max(1).values).all()):  # no open caption can win
                break
            index = (first + source).reshape(-1)
            state = tuple(s.index_select(1, index) for s in state) if isinstance(state, tuple) \
                else state.index_select(1, index)
            tokens = word.reshape(-1)
        captions = []
        for row in best.tolist():
            row = row[: row.index(END_INDEX)] if END_INDEX in row else row
            captions.append([i for i in row if i != PAD_INDEX])
        return list(zip(captions, best_lp.tolist()))


# ---------------------------------------------------------------- building and checking


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def copy_weights(src: nn.Module, dst: nn.Module) -> None:
    """Copy tensors in registration order (both models declare layers in the same order)."""
    a, b = src.state_dict(), dst.state_dict()
    if [tuple(v.shape) for v in a.values()] != [tuple(v.shape) for v in b.values()]:
        raise RuntimeError("plain reference does not have the rlgen model's tensors in order")
    dst.load_state_dict(dict(zip(b.keys(), a.values())))


def random_captions(batch: int, vocab: int, min_words: int, max_words: int,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``<start> w1 .. wn <end> <pad> ..`` rows (n uniform in min..max words) and lengths."""
    words = torch.randint(min_words, max_words + 1, (batch,), generator=generator)
    lengths = words + 2
    captions = torch.full((batch, int(lengths.max())), PAD_INDEX, dtype=torch.int64)
    for i, n in enumerate(words.tolist()):
        captions[i, 0] = START_INDEX
        captions[i, 1:n + 1] = torch.randint(4, vocab, (n,), generator=generator)
        captions[i, n + 1] = END_INDEX
    return captions, lengths


def build_pair(args) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    model = build_caption_model(args.encoder, args.vocab_size, args.embed_dim, args.hidden_dim,
                                args.rnn, dropout=0.0)
    plain = PlainNIC(args.encoder, args.vocab_size, args.embed_dim, args.hidden_dim, args.rnn)
    n, m = num_params(model), num_params(plain)
    assert n == m, f"plain reference has {m:,} parameters, rlgen's model {n:,}"
    copy_weights(model, plain)
    # the same function: teacher-forced logits on the real positions and the loss (training
    # mode: batch norm on batch statistics), then beam search (eval mode)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(4, 3, args.image_size, args.image_size, generator=g)
    captions, lengths = random_captions(4, args.vocab_size, 2, 6, g)
    with torch.no_grad():
        a, b = model(x, captions, lengths), plain(x, captions)
        real = torch.arange(captions.shape[1] - 1) < (lengths[:, None] - 1)
        loss_a = caption_loss(a, captions, lengths)
        loss_b = F.cross_entropy(b.flatten(0, 1), captions[:, 1:].flatten(),
                                 ignore_index=PAD_INDEX)
    err = float((a[real] - b[real]).abs().max() / b[real].abs().max().clamp_min(1e-12))
    if not err < 1e-4 or not torch.allclose(loss_a, loss_b, rtol=1e-5):
        raise RuntimeError(f"plain model differs from rlgen's: logits relative error {err:.2e}, "
                           f"loss {loss_a.item()} vs {loss_b.item()}")
    model.eval()
    plain.eval()
    found = [hyps[0] for hyps in model.beam_search(x, args.beam_size, args.max_length,
                                                   num_return=1)]
    theirs = plain.beam_search(x, args.beam_size, args.max_length)
    for (ids, lp), (ids2, lp2) in zip(found, theirs):
        if ids != ids2 or abs(lp - lp2) > 1e-4 * max(1.0, abs(lp)):
            raise RuntimeError(f"beam search differs: {ids} ({lp:.5f}) vs {ids2} ({lp2:.5f})")
    return model, plain


# ---------------------------------------------------------------- measurement




class Stepper:
    """One implementation in one setting: ``step()`` runs one timed step."""

    def __init__(self, impl: str, model: nn.Module, mode: str, device: torch.device,
                 precision: str, args):
        self.impl, self.model, self.mode = impl, model.to(device), mode
        self.device, self.precision, self.args = device, precision, args
        g = torch.Generator().manual_seed(1)
        self.x = torch.rand(args.batch_size, 3, args.image_size, args.image_size,
                            generator=g).to(device)
        captions, lengths = random_captions(args.batch_size, args.vocab_size, args.min_words,
                                            args.max_words, g)
        self.captions, self.lengths = captions.to(device), lengths.to(device)
        if mode == "train":
            self.model.train()
            self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)
            self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
        else:
            self.model.eval()

    def _loss(self):
        if self.impl == "rlgen":  # as rlgen's trainer does
            logits = self.model(self.x, self.captions, self.lengths)
            return caption_loss(logits.float(), self.captions, self.lengths)
        logits = self.model(self.x, self.captions)
        return F.cross_entropy(logits.float().flatten(0, 1), self.captions[:, 1:].flatten(),
                               ignore_index=PAD_INDEX)

    def step(self) -> float:
        sync(self.device)
        t0 = time.perf_counter()
        if self.mode == "beam":
            with autocast(self.device, self.precision):
                if self.impl == "rlgen":
                    self.model.beam_search(self.x, self.args.beam_size, self.args.max_length,
                                           num_return=1)
                else:
                    self.model.beam_search(self.x, self.args.beam_size, self.args.max_length)
        else:
            self.opt.zero_grad(set_to_none=True)
            with autocast(self.device, self.precision):
                loss = self._loss()
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        sync(self.device)
        return time.perf_counter() - t0



def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--encoder", default=None, choices=list(PLAIN_CNNS),
                   help="CNN encoder (default: resnet18 on the CPU, resnet50 on CUDA)")
    p.add_argument("--rnn", default="lstm", choices=["lstm", "gru"], help="decoder cell")
    p.add_argument("--image-size", type=int, default=None,
                   help="square image size (default: 128 on the CPU, 224 on CUDA)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images (and captions) per step (default: 8 on the CPU, 64 on CUDA)")
    p.add_argument("--vocab-size", type=int, default=None,
                   help="words, specials included (default: 10000, about COCO's at min count 5)")
    p.add_argument("--embed-dim", type=int, default=None, help="embedding size (NIC: 512)")
    p.add_argument("--hidden-dim", type=int, default=None, help="LSTM memory (NIC: 512)")
    p.add_argument("--min-words", type=int, default=None, help="shortest training caption")
    p.add_argument("--max-words", type=int, default=None, help="longest training caption")
    p.add_argument("--beam-size", type=int, default=3, help="beam width")
    p.add_argument("--max-length", type=int, default=None,
                   help="longest generated caption (default: 20)")
    p.add_argument("--precision", default=None,
                   help="comma-separated: 32,16-mixed,bf16-mixed (default: 32 on the CPU, all "
                        "three on CUDA)")
    p.add_argument("--mode", default="train,beam", help="comma-separated: train,beam")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per side and setting (default: 3 on the CPU, 20 on CUDA)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps per side first (default: 1 on the CPU, 5 on CUDA)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: mnist_deep, 32 px, batch 4, vocabulary 50, sizes 32, "
                        "captions of 3-6 words, 1 warm-up and 1 timed step, fp32 (explicit "
                        "flags still apply)")
    args = p.parse_args(argv)

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    gpu = device.type == "cuda"
    # attribute: (CUDA default, CPU default, --quick default); explicit flags always win
    defaults = {"encoder": ("resnet50", "resnet18", "mnist_deep"),
                "image_size": (224, 128, 32), "batch_size": (64, 8, 4),
                "vocab_size": (10000, 10000, 50), "embed_dim": (512, 512, 32),
                "hidden_dim": (512, 512, 32), "min_words": (8, 8, 3), "max_words": (16, 16, 6),
                "max_length": (20, 20, 8), "steps": (20, 3, 1), "warmup": (5, 1, 1),
                "precision": ("32,16-mixed,bf16-mixed", "32", "32")}
    for attr, (on_gpu, on_cpu, quick) in defaults.items():
        if getattr(args, attr) is None:
            setattr(args, attr, quick if args.quick else on_gpu if gpu else on_cpu)
    precisions = parse_list(p, args.precision, PRECISIONS, "--precision")
    modes = parse_list(p, args.mode, MODES, "--mode")
    small = [f for f in ("batch_size", "embed_dim", "hidden_dim", "beam_size", "max_length",
                         "steps", "min_words") if getattr(args, f) < 1]
    if small or args.warmup < 0 or args.max_words < args.min_words:
        p.error(f"--{', --'.join(s.replace('_', '-') for s in small) or 'max-words'}: sizes and "
                "counts must be >= 1, --warmup >= 0, --max-words >= --min-words")
    if args.vocab_size < 5:
        p.error(f"--vocab-size must be >= 5 (4 special tokens and a word), got "
                f"{args.vocab_size}")
    if args.image_size < 32:
        p.error(f"--image-size must be >= 32, got {args.image_size}")
    if args.threads is not None:
        if args.threads < 1:
            p.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)

    model, plain = build_pair(args)
    params = num_params(model)
    impls = {"rlgen": model, "plain": plain}
    common = {"device": device.type, "encoder": args.encoder, "rnn": args.rnn,
              "image_size": args.image_size, "batch_size": args.batch_size,
              "vocab_size": args.vocab_size, "embed_dim": args.embed_dim,
              "hidden_dim": args.hidden_dim, "beam_size": args.beam_size,
              "max_length": args.max_length, "words": [args.min_words, args.max_words],
              "threads": torch.get_num_threads(), "params": params}
    ratios: dict[str, float] = {}
    rates: dict[str, dict[str, float]] = {}
    rows: list[str] = []
    for precision in precisions:
        for mode in modes:
            steppers = {impl: Stepper(impl, m, mode, device, precision, args)
                        for impl, m in impls.items()}
            times: dict[str, list[float]] = {impl: [] for impl in steppers}
            running = ""
            try:
                for step in range(args.warmup + args.steps):  # alternate: drift hits both
                    for running, s in steppers.items():
                        seconds = s.step()
                        if step >= args.warmup:
                            times[running].append(seconds)
            except RuntimeError as exc:  # e.g. no bf16 LSTM kernel on this CPU
                print(json.dumps({
                    "benchmark": BENCH, "metric": f"{mode}_rlgen_over_plain", "value": None,
                    "unit": f"ratio of {UNITS[mode]}", "precision": precision, **common,
                    "error": f"{running}: {str(exc).splitlines()[0]}",
                }), flush=True)  # fmt: skip
                rows.append(f"| {args.encoder} | {mode} | {precision} | {UNITS[mode]} | "
                            f"failed | failed | n/a |")
                del steppers
                continue
            metric = f"{mode}_{'captions' if mode == 'train' else 'images'}_per_s"
            rate = {impl: args.batch_size / statistics.median(t) for impl, t in times.items()}
            for impl in steppers:
                print(json.dumps({
                    "benchmark": BENCH, "metric": metric, "value": round(rate[impl], 3),
                    "unit": UNITS[mode], "impl": impl, "precision": precision, **common,
                    "steps": args.steps, "warmup": args.warmup, "stat": "median step",
                }), flush=True)  # fmt: skip
            ratio = round(rate["rlgen"] / rate["plain"], 3)
            print(json.dumps({
                "benchmark": BENCH, "metric": f"{mode}_rlgen_over_plain", "value": ratio,
                "unit": f"ratio of {UNITS[mode]} (1.0 = no overhead)", "precision": precision,
                **common, "rlgen_per_s": round(rate["rlgen"], 3),
                "plain_per_s": round(rate["plain"], 3),
            }), flush=True)  # fmt: skip
            key = f"{mode}/{precision}"
            ratios[key] = ratio
            rates[key] = {impl: round(r, 3) for impl, r in rate.items()}
            rows.append(f"| {args.encoder} | {mode} | {precision} | {UNITS[mode]} | "
                        f"{rate['rlgen']:.1f} | {rate['plain']:.1f} | {ratio:.3f} |")
            del steppers
    print("| encoder | mode | precision | unit | rlgen | plain | rlgen/plain |", file=sys.stderr)
    print("|---|---|---|---|---|---|---|", file=sys.stderr)
    print("\n".join(rows), file=sys.stderr, flush=True)
    print(json.dumps({
        "benchmark": BENCH, "metric": "summary",
        "value": round(statistics.geometric_mean(list(ratios.values())), 3) if ratios else None,
        "unit": "rlgen/plain throughput (geometric mean)", "ratios": ratios, "rates": rates,
        "steps": args.steps, "warmup": args.warmup, **common,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
