"""FID / Inception Score: closed forms, streaming statistics, feature networks, the cache."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rlgen.generative.metrics import (
    ClassifierFeatureNet,
    ClassifierSettings,
    TorchScriptFeatureNet,
    classifier_feature_net,
    feature_statistics,
    fid,
    frechet_distance,
    inception_score,
    load_feature_net,
    sqrtm_psd,
)
from rlgen.vision.backbones import create_model

# The short schedule the tests train their feature classifier with (the cache key);
# tests/generative/test_dcgan.py uses the same settings and so the same cached file.
TEST_CLASSIFIER = ClassifierSettings(epochs=1, batch_size=128, lr=2e-3)


@pytest.fixture(scope="session")
def fid_cache_dir(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "rlgen_fid_cache"


def random_spd(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def test_identical_distributions_have_zero_distance():
    mu = torch.randn(16, dtype=torch.float64)
    sigma = random_spd(16, 0)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)


def test_diagonal_covariances_match_the_closed_form():
    g = torch.Generator().manual_seed(1)
    mu1, mu2 = (torch.randn(8, generator=g, dtype=torch.float64) for _ in range(2))
    s1, s2 = (torch.rand(8, generator=g, dtype=torch.float64) + 0.1 for _ in range(2))
    # For commuting (diagonal) covariances: |mu1 - mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2.
    expected = float(((mu1 - mu2) ** 2).sum() + ((s1.sqrt() - s2.sqrt()) ** 2).sum())
    got = frechet_distance(mu1, torch.diag(s1), mu2, torch.diag(s2))
    assert got == pytest.approx(expected, rel=1e-10)


def test_general_covariances_match_the_eigenvalues_of_the_product():
    # tr sqrt(S1^1/2 S2 S1^1/2) = sum sqrt(eig(S1 S2)): an independent (non-symmetric) route.
    s1, s2 = random_spd(6, 2), random_spd(6, 3)
    mu1, mu2 = torch.zeros(6), torch.ones(6)
    trace_sqrt = torch.linalg.eigvals(s1 @ s2).real.clamp_min(0).sqrt().sum()
    expected = float(6.0 + torch.trace(s1) + torch.trace(s2) - 2 * trace_sqrt)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    # and numpy inputs are accepted
    assert frechet_distance(mu1.numpy(), s1.numpy(), mu2.numpy(), s2.numpy()) == pytest.approx(
        expected, rel=1e-9
    )


def test_sqrtm_psd_squares_back_and_shape_errors_are_clear():
    s = random_spd(5, 4)
    root = sqrtm_psd(s)
    torch.testing.assert_close(root @ root, s)
    with pytest.raises(ValueError, match="covariance"):
        frechet_distance(torch.zeros(3), torch.eye(4), torch.zeros(3), torch.eye(3))
    with pytest.raises(ValueError, match="same length"):
        frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(4), torch.eye(3))


def test_feature_statistics_stream_equals_full_batch_covariance():
    images = torch.randint(0, 256, (50, 1, 4, 4), dtype=torch.uint8)
    proj = torch.randn(16, 5)

    def features(x: torch.Tensor) -> torch.Tensor:
        assert x.dtype == torch.float32 and float(x.max()) <= 1.0  # uint8 became [0, 1]
        return x.flatten(1) @ proj

    mu, sigma = feature_statistics(features, images, batch_size=7)
    full = (images.float() / 255).flatten(1).double() @ proj.double()
    torch.testing.assert_close(mu, full.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sigma, torch.cov(full.T), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        feature_statistics(features, images[:1])


def test_fid_is_zero_for_the_same_images_and_grows_with_a_shift():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(200, 1, 4, 4, generator=g) * 0.5

    def net(x):
        return x.flatten(1)

    assert fid(images, images, net) == pytest.approx(0.0, abs=1e-6)
    near, far = fid(images + 0.05, images, net), fid(images + 0.3, images, net)
    assert 0 < near < far
    # a generator (callable n -> images) and precomputed real statistics give the same value
    stats = feature_statistics(net, images)
    calls = []

    def generator(n):
        calls.append(n)
        return images[sum(calls) - n : sum(calls)] + 0.3

    assert fid(generator, stats, net, num_samples=200, batch_size=64) == pytest.approx(far)
    assert calls == [64, 64, 64, 8]


def test_inception_score_bounds():
    n, k = 400, 10
    confident_uniform = torch.full((n, k), -30.0)
    confident_uniform[torch.arange(n), torch.arange(n) % k] = 30.0
    mean, std = inception_score(torch.zeros(n, 1, 2, 2), lambda x: confident_uniform[: len(x)],
                                batch_size=n, splits=4)  # fmt: skip
    assert mean == pytest.approx(k, rel=1e-4) and std < 1e-6
    mean, _ = inception_score(torch.zeros(n, 1, 2, 2), lambda x: torch.zeros(len(x), k),
                              batch_size=n, splits=4)  # fmt: skip
    assert mean == pytest.approx(1.0)
    # Partly collapsed: confident, but only m of the k classes (equally often): exactly m.
    m = 3
    collapsed = torch.full((n, k), -30.0)
    collapsed[torch.arange(n), torch.arange(n) % m] = 30.0
    mean, _ = inception_score(torch.zeros(n, 1, 2, 2), lambda x: collapsed[: len(x)],
                              batch_size=n, splits=4)  # fmt: skip
    assert mean == pytest.approx(m, rel=1e-4)
    # Not confident: p(y|x) = (1 - e) on x's class, e / (k - 1) on each other class, classes
    # balanced: IS = exp(log k - H), H the entropy of p(y|x).
    e = 0.3
    probs = torch.full((n, k), e / (k - 1))
    probs[torch.arange(n), torch.arange(n) % k] = 1 - e
    entropy = -(1 - e) * math.log(1 - e) - e * math.log(e / (k - 1))
    mean, _ = inception_score(torch.zeros(n, 1, 2, 2), lambda x: probs[: len(x)].log(),
                              batch_size=n, splits=4)  # fmt: skip
    assert mean == pytest.approx(math.exp(math.log(k) - entropy), rel=1e-6)


def test_classifier_features_are_the_penultimate_layer():
    torch.manual_seed(0)
    model = create_model("mnist_conv2_relu", num_classes=10, in_channels=1)
    net = ClassifierFeatureNet(model, in_channels=1, input_size=(28, 28), mean=0.1, std=0.3)
    x = torch.rand(6, 1, 28, 28)
    feats = net.features(x)
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert feats.shape == (6, last.in_features)
    torch.testing.assert_close(net.logits(x), last(feats))
    # RGB 32x32 images are converted to the classifier's grey 28x28 input
    assert net.features(torch.rand(3, 3, 32, 32)).shape == (3, last.in_features)


class _MeanPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1:] == (3, 16, 16)
        return x.mean(dim=(2, 3))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script in torch >= 2.10
def test_torchscript_and_exported_feature_nets(tmp_path, monkeypatch):
    scripted = tmp_path / "features.pt"
    torch.jit.script(_MeanPool()).save(str(scripted))
    # A real torch.export takes ~10 s; the .pt2 branch only needs load(path).module().
    exported = tmp_path / "features.pt2"
    exported.write_bytes(b"stand-in")

    class _Program:
        def module(self):
            return _MeanPool()

    monkeypatch.setattr(torch.export, "load", lambda path: _Program())
    grey = torch.rand(4, 1, 28, 28)
    expected = nn.functional.interpolate(grey, size=(16, 16), mode="bilinear",
                                         antialias=True).mean(dim=(2, 3))  # fmt: skip
    for path in (scripted, exported):
        net = load_feature_net(str(path), input_size=16)
        assert isinstance(net, TorchScriptFeatureNet)
        feats = net(grey)  # one channel repeated to three, resized to 16x16
        assert feats.shape == (4, 3)
        for c in range(3):
            torch.testing.assert_close(feats[:, c : c + 1], expected)
    bad = tmp_path / "not_a_module.pt"
    bad.write_bytes(b"not torchscript")
    with pytest.raises(ValueError, match="TorchScript"):
        load_feature_net(str(bad))
    with pytest.raises(FileNotFoundError, match="no such"):
        load_feature_net(str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="--feature-net must be"):
        load_feature_net("inception")


def nearest_class_mean_accuracy() -> float:
    """Held-out accuracy on mnist-subset of classifying each digit as the class whose mean
    training image is nearest (Euclidean)."""
    from rlgen.data import load_dataset

    train, test = (load_dataset("mnist-subset", train=t) for t in (True, False))
    x, y = train.images.flatten(1).float(), torch.as_tensor(train.labels)
    means = torch.stack([x[y == c].mean(0) for c in range(10)])
    predicted = torch.cdist(test.images.flatten(1).float(), means).argmin(1)
    return (predicted == torch.as_tensor(test.labels)).float().mean().item()


def test_classifier_is_trained_once_then_loaded_from_the_cache(fid_cache_dir):
    first = classifier_feature_net(TEST_CLASSIFIER, cache_dir=fid_cache_dir)
    assert first.info["num_heldout"] == 1000
    # One epoch on the 4,000 training digits must clearly beat the strongest trivial
    # classifier, the nearest class-mean image (most frequent class: 0.10). Measured: 0.805
    # against 0.928; a 0.06 margin is half the gap and 6 standard errors of an accuracy on
    # 1,000 digits.
    assert first.info["heldout_accuracy"] > nearest_class_mean_accuracy() + 0.06, first.info
    again = classifier_feature_net(TEST_CLASSIFIER, cache_dir=fid_cache_dir)
    assert again.info["cached"] is True
    assert again.info["path"] == first.info["path"]
    x = torch.rand(5, 1, 28, 28)
    torch.testing.assert_close(first.features(x), again.features(x))
    # other settings -> another cache entry
    assert ClassifierSettings(epochs=2).filename() != TEST_CLASSIFIER.filename()
    assert again.info["heldout_accuracy"] == first.info["heldout_accuracy"]  # kept in the cache
