"""VAE: shapes, any backbone as encoder, ELBO terms, IWAE bound ordering against exact
quadrature, learning on the mnist-subset, resume, mixed precision, load and the eval CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

import rlgen.generative
from rlgen.checkpoint import CheckpointError
from rlgen.errors import InputError
from rlgen.generative.vae import VAE, VAEConfig, evaluate_model, gaussian_kl, train
from rlgen.runtime import torch_threads
from rlgen.vision.backbones import register_backbone
from rlgen.vision.backbones.base import Backbone, FeatureInfo


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small models: one thread is about as fast, and immune to a busy shared CPU (OpenMP
    threads spinning against other processes made a 2-thread run up to 20x slower here)."""
    with torch_threads(1):
        yield


TINY = dict(dataset="mnist-subset", device="cpu", width=8, latent_dim=8, batch_size=64,
            log_every=5, sample_every=0, checkpoint_every=0, eval_images=0, eval_k=0)


def tiny(**overrides) -> VAEConfig:
    return VAEConfig(**{**TINY, **overrides})


def metrics_of(run_dir) -> list[dict]:
    with open(f"{run_dir}/metrics.jsonl") as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 64, 64)])
def test_shapes_and_images_in_unit_range(shape):
    model = VAE(shape, latent_dim=5, width=4)
    x = torch.rand(3, *shape)
    logits, mu, logvar = model(x)
    assert logits.shape == (3, *shape) and mu.shape == logvar.shape == (3, 5)
    images = model.generate(torch.randn(4, 5))
    assert images.shape == (4, *shape)
    assert images.min() >= 0 and images.max() <= 1


def test_unsupported_image_size_names_the_choices():
    with pytest.raises(ValueError, match="28, 32 or 64"):
        VAE((1, 30, 30))


def test_resnet18_encoder_trains_one_step():
    model = VAE((3, 32, 32), latent_dim=4, encoder="resnet18", width=4)
    x = torch.rand(2, 3, 32, 32)
    logits, mu, logvar = model(x)
    recon, kl = model.loss_terms(x, logits, mu, logvar)
    (recon + kl).backward()
    assert model.fc_mu.in_features == 512  # measured from resnet18's 512x1x1 feature map
    assert model.encoder.conv1.weight.grad is not None


def test_vector_backbone_is_refused_as_encoder():
    with pytest.raises(ValueError, match="--encoder mlp is a vector backbone"):
        VAE(encoder="mlp")


def test_a_user_registered_backbone_is_a_valid_encoder():
    class Pool(Backbone):
        def __init__(self, in_channels: int = 1):
            super().__init__()
            self.in_channels = in_channels
            self.feature_info = [FeatureInfo("conv", 6, 4)]
            self.conv = torch.nn.Conv2d(in_channels, 6, 3, padding=1)

        def forward_stages(self, x):
            return [torch.nn.functional.avg_pool2d(self.conv(x), 4)]

    register_backbone("test_vae_pool")(Pool)
    try:
        model = VAE((1, 28, 28), latent_dim=3, encoder="test_vae_pool", width=4)
        assert model.fc_mu.in_features == 6 * 7 * 7
        assert model(torch.rand(2, 1, 28, 28))[0].shape == (2, 1, 28, 28)
    finally:
        from rlgen.registry import BACKBONES

        BACKBONES.unregister("test_vae_pool")


def test_reconstruct_sample_and_evaluate_leave_batch_norm_statistics_alone():
    model = VAE(width=4).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(4, 1, 28, 28)
    model.reconstruct(x)
    model.sample(4)
    evaluate_model(model, x, k=2)
    assert model.training
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_gaussian_kl_matches_monte_carlo():
    torch.manual_seed(0)
    mu, logvar = torch.randn(1, 3), torch.randn(1, 3) * 0.5
    z = mu + torch.randn(200_000, 3) * (0.5 * logvar).exp()
    log_q = (-0.5 * ((z - mu) ** 2 / logvar.exp() + logvar + math.log(2 * math.pi))).sum(1)
    log_p = (-0.5 * (z**2 + math.log(2 * math.pi))).sum(1)
    assert gaussian_kl(mu, logvar).item() == pytest.approx((log_q - log_p).mean().item(), abs=0.02)
    assert gaussian_kl(torch.zeros(2, 4), torch.zeros(2, 4)).abs().max() == 0


def test_likelihoods_match_torch_distributions():
    torch.manual_seed(0)
    x = torch.rand(3, 1, 28, 28)
    logits = torch.randn(3, 1, 28, 28)
    bernoulli = VAE(likelihood="bernoulli", width=4)
    # grey-level targets: the Bernoulli "likelihood" is the negative binary cross-entropy
    expected = (x * torch.nn.functional.logsigmoid(logits)
                + (1 - x) * torch.nn.functional.logsigmoid(-logits)).flatten(1).sum(1)
    assert torch.allclose(bernoulli.log_px_given_z(x, logits), expected, atol=1e-3)
    gaussian = VAE(likelihood="gaussian", width=4)
    normal = torch.distributions.Normal(torch.sigmoid(logits), 0.1)
    assert torch.allclose(gaussian.log_px_given_z(x, logits),
                          normal.log_prob(x).flatten(1).sum(1), rtol=1e-4)
    x_bin = bernoulli.binarize_input(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x_bin, x)  # binarize="none" keeps grey levels
    dynamic_vae = VAE(binarize="dynamic", width=4)
    dynamic = dynamic_vae.binarize_input(x, generator=torch.Generator().manual_seed(1))
    assert set(dynamic.unique().tolist()) == {0.0, 1.0}
    assert dynamic.mean().item() == pytest.approx(x.mean().item(), abs=0.02)
    # given uniforms u, the draw is u < x: what the trainer uses with global-batch noise
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(2))
    assert torch.equal(dynamic_vae.binarize_input(x, u), (u < x).float())


def test_elbo_below_iwae_below_exact_log_likelihood():
    """With a 1-D latent, log p(x) = log of an integral computed by quadrature; the ELBO and
    the IWAE bounds must sit below it, IWAE rising with k and converging to it."""
    torch.manual_seed(0)
    model = VAE((1, 28, 28), latent_dim=1, width=4, binarize="threshold").eval()
    with torch.no_grad():
        model.decoder.fc.weight.mul_(3.0)  # a peaked posterior, so q and p(z|x) differ
    x = torch.bernoulli(torch.full((6, 1, 28, 28), 0.3))
    z = torch.linspace(-10, 10, 4001).reshape(-1, 1)
    with torch.no_grad():
        log_px = model.log_px_given_z(x.unsqueeze(1), model.decode_logits(z).unsqueeze(0))
        log_pz = -0.5 * (z[:, 0] ** 2 + math.log(2 * math.pi))
        exact = (torch.logsumexp(log_px + log_pz, 1) + math.log(z[1, 0] - z[0, 0])).mean()
    g = torch.Generator().manual_seed(0)

    def average(estimate, repeats):  # the bounds hold for expectations: average some draws
        return torch.stack([estimate().mean() for _ in range(repeats)]).mean().item()

    elbo = average(lambda: model.elbo(x, generator=g), 10)
    iwae = {k: average(lambda k=k: model.log_likelihood(x, k=k, generator=g), repeats)
            for k, repeats in ((1, 10), (10, 10), (100, 3), (1000, 1))}
    assert abs(iwae[1] - elbo) < 0.5  # k=1: a one-sample ELBO estimate
    assert elbo < iwae[10] - 1.0  # IWAE is clearly tighter than the ELBO here
    assert iwae[10] < iwae[100] < exact + 0.1  # rises with k, stays below log p(x) (+ noise)
    assert abs(iwae[1000] - exact) < 0.15
    with pytest.raises(ValueError, match="k must be >= 1"):
        model.log_likelihood(x, k=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """120 steps (about 2 epochs) of a width-8 conv VAE on the mnist-subset."""
    run_dir = tmp_path_factory.mktemp("vae") / "run"
    config = tiny(eval_images=500, max_steps=120, learning_rate=2e-3, sample_every=60,
                  run_dir=str(run_dir))
    result = train(config, progress=False)
    return config, result


def mean_image_nll(num_held_out: int) -> float:
    """The strongest trivial baseline of a VAE: a decoder that ignores z, i.e. independent
    Bernoulli pixels whose means m are the training split's mean image. Its NLL of the first
    ``num_held_out`` held-out images, nats per image, on grey levels (binarize="none", the data
    the test runs train and evaluate on): sum_pixels -(x log m + (1 - x) log(1 - m))."""
    from rlgen.data import load_dataset

    train_x = load_dataset("mnist-subset", train=True).images.float() / 255
    x = load_dataset("mnist-subset", train=False).images[:num_held_out].float() / 255
    m = train_x.mean(0).clamp(1e-6, 1 - 1e-6)
    return -(x * m.log() + (1 - x) * (1 - m).log()).flatten(1).sum(1).mean().item()


# A trained VAE must beat the mean-image decoder by this many nats per image (see below).
NLL_MARGIN = 10.0


def test_held_out_nll_beats_the_mean_image_and_samples_vary(trained):
    config, result = trained
    from rlgen.data import load_dataset

    # The run models grey levels as Bernoulli means (binarize="none"); so does the baseline.
    assert config.binarize == "none"
    held_out = load_dataset("mnist-subset", train=False).images[:500].float() / 255
    model = rlgen.generative.load(result["checkpoint"])
    assert model.binarize == "none"
    nll = evaluate_model(model, held_out, k=20, seed=config.seed)["eval/nll"]
    baseline = mean_image_nll(500)
    # Measured: mean image 207.4 nats; the trained VAE 187.6 (IWAE, k=20; its neg. ELBO 192).
    # The k=20 estimate is an upper bound of the NLL in expectation, so this is conservative.
    # Margin 10 nats: half the measured gap, over 10x the standard error of the mean per-image
    # difference over 500 images (0.86). An untrained decoder is no baseline: 530 nats.
    assert nll < baseline - NLL_MARGIN, (nll, baseline)
    assert result["eval/neg_elbo"] < baseline, (result["eval/neg_elbo"], baseline)

    samples = model.sample(32, seed=1)
    assert samples.std(0).mean() > 0.02  # images differ from each other (the baseline's don't)
    assert samples.flatten(1).std(1).min() > 0.05  # and are not flat


def test_run_logs_elbo_terms_and_grids(trained):
    config, result = trained
    tags = {m["tag"] for m in metrics_of(result["run_dir"])}
    assert {"train/recon", "train/kl", "train/elbo", "train/loss", "eval/neg_elbo"} <= tags
    elbo = [m for m in metrics_of(result["run_dir"]) if m["tag"] == "train/elbo"]
    assert elbo[-1]["value"] > elbo[0]["value"] + 100
    samples = sorted(p.name for p in (config_dir(result) / "samples").iterdir())
    assert samples == ["generated_0000060.png", "generated_0000120.png",
                       "reconstructions_0000060.png", "reconstructions_0000120.png"]


def config_dir(result):
    from pathlib import Path

    return Path(result["run_dir"])


def test_load_round_trip(trained):
    _, result = trained
    state = torch.load(result["checkpoint"], weights_only=True)
    assert state["meta"]["kind"] == "vae" and state["step"] == 120
    model = rlgen.generative.load(result["checkpoint"])
    assert isinstance(model, VAE) and not model.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state["state"]["model"][name]), name
    again = rlgen.generative.load(result["run_dir"])  # a run directory: its latest checkpoint
    assert torch.equal(again.sample(4, seed=3), model.sample(4, seed=3))


def test_resume_matches_uninterrupted_run(tmp_path):
    common = dict(binarize="dynamic", checkpoint_every=7)  # RNG-consuming binarization
    full = train(tiny(**common, max_steps=14, run_dir=str(tmp_path / "full")), progress=False)
    part = train(tiny(**common, max_steps=7, run_dir=str(tmp_path / "part")), progress=False)
    resumed = train(tiny(**common, max_steps=14, resume=str(tmp_path / "part")), progress=False)
    assert resumed["run_dir"] == part["run_dir"]  # continues in the resumed run's directory
    a = torch.load(full["checkpoint"], weights_only=True)
    b = torch.load(resumed["checkpoint"], weights_only=True)
    assert a["step"] == b["step"] == 14
    for name in a["state"]["model"]:
        assert torch.equal(a["state"]["model"][name], b["state"]["model"][name]), name
    steps = [m["step"] for m in metrics_of(part["run_dir"]) if m["tag"] == "train/loss"]
    assert steps == [5, 7, 10, 14]


def test_resume_rejects_another_model(tmp_path):
    run = train(tiny(max_steps=2, run_dir=str(tmp_path / "a")), progress=False)
    with pytest.raises(InputError, match="--latent-dim cannot change when resuming"):
        train(tiny(latent_dim=4, max_steps=4, resume=run["run_dir"]), progress=False)
    with pytest.raises(CheckpointError, match="holds a 'vae' run, not a 'autoencoder' one"):
        from rlgen.generative.autoencoder import AutoencoderConfig
        from rlgen.generative.autoencoder import train as train_autoencoder

        train_autoencoder(AutoencoderConfig(dataset="mnist-subset", resume=run["run_dir"]))


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_mixed_precision_losses_are_finite(tmp_path, precision):
    result = train(tiny(log_every=1, max_steps=3, batch_size=32, precision=precision,
                        run_dir=str(tmp_path / precision)), progress=False)
    losses = [m["value"] for m in metrics_of(result["run_dir"]) if m["tag"] == "train/loss"]
    assert len(losses) == 3
    assert all(isinstance(v, float) and math.isfinite(v) for v in losses)
    skipped = [m["value"] for m in metrics_of(result["run_dir"])
               if m["tag"] == "train/skipped_steps"]
    assert skipped[-1] < 3  # the loss scaler let at least one optimizer step through


def test_config_validation_names_the_flag():
    with pytest.raises(ValueError, match="--beta must be >= 0, got -1"):
        VAEConfig(beta=-1)
    with pytest.raises(ValueError, match="--latent-dim must be >= 1, got 0"):
        VAEConfig(latent_dim=0)
    with pytest.raises(ValueError, match="--binarize must be"):
        VAEConfig(binarize="yes")


def test_cli_eval_prints_neg_elbo_and_nll(trained, capsys):
    from rlgen.cli import main

    _, result = trained
    code = main(["eval", "vae", "--checkpoint", result["checkpoint"], "--k", "20",
                 "--num-images", "100", "--device", "cpu"])
    assert code == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["images"] == 100 and out["k"] == 20
    assert out["nll_nats"] < out["neg_elbo_nats"]  # the IWAE bound is tighter
    # on the same 100 held-out images, clearly below the mean-image decoder's NLL (206.9)
    assert out["nll_nats"] < mean_image_nll(100) - NLL_MARGIN, out


def test_cli_rejects_bad_values(capsys):
    from rlgen.cli import main

    assert main(["train", "vae", "--batch-size", "0"]) == 2
    assert "--batch-size must be > 0, got 0" in capsys.readouterr().err
    assert main(["train", "vae", "--precision", "fp8"]) == 2
    assert "fp8" in capsys.readouterr().err
    assert main(["eval", "vae"]) == 2
    assert "--checkpoint is required" in capsys.readouterr().err
