"""Held-out VAE negative log-likelihood: rlgen's conv VAE next to pytorch/examples' MLP VAE.

Both models are trained on the same data, in the same batch order, for the same number of
epochs (Adam, lr 1e-3, batch 128 as in pytorch/examples), then evaluated on the same held-out
images with the same estimators: the negative ELBO (one posterior sample, analytic KL) and the
importance-weighted NLL bound of Burda et al. (2016) with k samples, in nats per image.

- ``rlgen-conv-vae``: ``rlgen.generative.vae`` trained through its real trainer
  (``rlgen train vae``), so ``train_images_per_s`` includes logging and checkpointing.
- ``mlp-vae-784-400-20``: pytorch/examples' ``vae/main.py`` architecture (784-400-20,
  ReLU, Bernoulli decoder), written here from its description, trained with a plain loop.

Also measured: ``sample_images_per_s`` (prior samples, inference mode, batches of 256) and
the speed of one epoch of batches through ``--loader tensor`` versus a ``DataLoader``.

With ``--binarize none`` (default) the data are grey levels used as Bernoulli means, the
convention of pytorch/examples' "test loss" (105.6 after 10 epochs of full MNIST); this is not
a proper likelihood and not comparable to binarized-MNIST NLLs (IWAE paper 86.76 with k=5000,
Pythae 89.78). ``--binarize dynamic`` trains on stochastically binarized digits and evaluates on
one fixed binarization, the protocol of those papers; the mnist-subset has 4,000 training
images, not 60,000, so expect higher NLLs than the full-MNIST figures.

Prints one JSON object per line; the last line is a summary.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from rlgen.data.batches import LoaderBatches, TensorBatches
from rlgen.generative.model import GenerativeModel
from rlgen.generative.vae import VAE, VAEConfig, evaluate_model, train

BENCH = "vae_nll"


class MLPVAE(VAE):
    """pytorch/examples' VAE: 784 -> 400 -> (mu, logvar) 20; 20 -> 400 -> 784 logits.

    Reuses ``VAE``'s likelihood, ELBO and IWAE code; only the networks differ."""

    def __init__(self, latent_dim: int = 20, hidden: int = 400, binarize: str = "none"):
        GenerativeModel.__init__(self)
        self.model_config = {"latent_dim": latent_dim, "hidden": hidden, "binarize": binarize}
        self.image_shape = (1, 28, 28)
        self.latent_dim = latent_dim
        self.likelihood = "bernoulli"
        self.binarize = binarize
        self.fc1 = nn.Linear(784, hidden)
        self.fc_mu = nn.Linear(hidden, latent_dim)
        self.fc_logvar = nn.Linear(hidden, latent_dim)
        self.fc3 = nn.Linear(latent_dim, hidden)
        self.fc4 = nn.Linear(hidden, 784)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.fc1(x.reshape(x.shape[0], 784)))
        return self.fc_mu(h), self.fc_logvar(h)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc4(torch.relu(self.fc3(z))).reshape(z.shape[0], 1, 28, 28)


def emit(metric: str, value: float, unit: str, **settings) -> dict:
    record = {"benchmark": BENCH, "metric": metric, "value": value, "unit": unit, **settings}
    print(json.dumps(record), flush=True)
    return record


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def train_mlp(images: torch.Tensor, args, steps_per_epoch: int) -> tuple[MLPVAE, float]:
    torch.manual_seed(args.seed)
    model = MLPVAE(args.latent_dim, binarize=args.binarize).to(args.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = TensorBatches(images, None, args.batch_size, seed=args.seed, device=args.device)
    steps = args.epochs * steps_per_epoch
    start = time.perf_counter()
    for step, (x, _) in enumerate(data.batches(0)):
        if step >= steps:
            break
        x = model.binarize_input(x)
        logits, mu, logvar = model(x)
        recon, kl = model.loss_terms(x, logits, mu, logvar)
        optimizer.zero_grad(set_to_none=True)
        (recon + kl).backward()
        optimizer.step()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    return model, steps * data.batch_size / (time.perf_counter() - start)


def best_rate(count: int, run, repeats: int = 3) -> float:
    """``count / seconds`` of the fastest of ``repeats`` calls (the machine is shared)."""
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return count / best


def sample_speed(model: GenerativeModel, n: int, device: str) -> float:
    model.sample(min(n, 256), seed=1, device=device)  # warm-up
    return best_rate(n, lambda: model.sample(n, seed=0, device=device))


def loader_speed(dataset, batch_size: int, kind: str, epochs: int = 3) -> float:
    """Images per second produced by one loader over ``epochs`` epochs (best of 3)."""
    if kind == "tensor":
        data = TensorBatches(dataset.images, None, batch_size)
    else:
        data = LoaderBatches(dataset, batch_size)
    steps = epochs * data.steps_per_epoch

    def run() -> None:
        stream = data.batches(0)
        for _ in range(steps):
            next(stream)

    return best_rate(steps * data.batch_size, run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist-subset", help="28x28 grey dataset")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs for both models")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--latent-dim", type=int, default=20)
    parser.add_argument("--width", type=int, default=32, help="conv VAE width")
    parser.add_argument("--binarize", choices=["none", "dynamic", "threshold"], default="none")
    parser.add_argument("--k", type=int, default=100, help="importance samples for the NLL")
    parser.add_argument("--eval-images", type=int, default=500, help="held-out images")
    parser.add_argument("--sample-images", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", default="32", choices=["32", "16-mixed", "bf16-mixed"])
    parser.add_argument("--skip-loader", action="store_true", help="skip the loader timing")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from rlgen.data import load_dataset

    train_set = load_dataset(args.dataset, train=True)
    held_out = load_dataset(args.dataset, train=False)
    x_eval = held_out.images[: args.eval_images].to(args.device).float().div_(255.0)
    common = dict(dataset=args.dataset, epochs=args.epochs, batch_size=args.batch_size,
                  latent_dim=args.latent_dim, k=args.k, binarize=args.binarize,
                  device=args.device, threads=torch.get_num_threads(),
                  train_images=len(train_set), eval_images=int(x_eval.shape[0]))
    results: dict[str, dict[str, float]] = {}

    # rlgen's conv VAE through its trainer
    with tempfile.TemporaryDirectory() as tmp:
        config = VAEConfig(dataset=args.dataset, epochs=args.epochs, batch_size=args.batch_size,
                           latent_dim=args.latent_dim, width=args.width, binarize=args.binarize,
                           learning_rate=1e-3, device=args.device, seed=args.seed,
                           precision=args.precision, run_dir=str(Path(tmp) / "run"),
                           log_every=10_000, sample_every=0, checkpoint_every=0,
                           eval_images=0, eval_k=0)
        start = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # keep stdout to JSON lines
            out = train(config, progress=False)
        seconds = time.perf_counter() - start
        from rlgen.generative import load

        conv = load(out["checkpoint"], device=args.device)
    steps = out["step"]
    conv_train_ips = steps * min(args.batch_size, len(train_set)) / seconds
    steps_per_epoch = steps // args.epochs

    mlp, mlp_train_ips = train_mlp(train_set.images, args, steps_per_epoch)
    mlp.eval()

    for name, model, train_ips in (("rlgen-conv-vae", conv, conv_train_ips),
                                   ("mlp-vae-784-400-20", mlp, mlp_train_ips)):
        settings = dict(model=name, params=params(model), **common)
        metrics = evaluate_model(model, x_eval, k=args.k, seed=args.seed)
        results[name] = {
            "heldout_nll": metrics["eval/nll"], "heldout_neg_elbo": metrics["eval/neg_elbo"],
            "train_images_per_s": train_ips,
            "sample_images_per_s": sample_speed(model, args.sample_images, args.device),
        }
        emit("heldout_nll", round(metrics["eval/nll"], 2), "nats", **settings)
        emit("heldout_neg_elbo", round(metrics["eval/neg_elbo"], 2), "nats", **settings)
        emit("train_images_per_s", round(train_ips, 1), "images/s",
             precision=args.precision if name.startswith("rlgen") else "32", **settings)
        emit("sample_images_per_s", round(results[name]["sample_images_per_s"], 1), "images/s",
             **settings)

    if not args.skip_loader and args.device == "cpu":
        tensor = loader_speed(train_set, args.batch_size, "tensor")
        loader = loader_speed(train_set, args.batch_size, "dataloader")
        for kind, value in (("tensor", tensor), ("dataloader", loader)):
            emit("loader_images_per_s", round(value, 1), "images/s", loader=kind,
                 dataset=args.dataset, batch_size=args.batch_size,
                 threads=torch.get_num_threads())
        results["loader"] = {"tensor_over_dataloader": tensor / loader}

    conv_r, mlp_r = results["rlgen-conv-vae"], results["mlp-vae-784-400-20"]
    emit("summary", round(conv_r["heldout_nll"] - mlp_r["heldout_nll"], 2), "nats",
         note="conv NLL minus MLP NLL (negative: the conv VAE is better)",
         conv_nll=round(conv_r["heldout_nll"], 2), mlp_nll=round(mlp_r["heldout_nll"], 2),
         conv_neg_elbo=round(conv_r["heldout_neg_elbo"], 2),
         mlp_neg_elbo=round(mlp_r["heldout_neg_elbo"], 2),
         conv_train_images_per_s=round(conv_r["train_images_per_s"], 1),
         conv_sample_images_per_s=round(conv_r["sample_images_per_s"], 1),
         **({"tensor_over_dataloader": round(results["loader"]["tensor_over_dataloader"], 1)}
            if "loader" in results else {}),
         **common)
    return 0 if math.isfinite(conv_r["heldout_nll"]) else 1


if __name__ == "__main__":
    sys.exit(main())
