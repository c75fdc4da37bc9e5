"""NIC caption model: teacher forcing on packed sequences, greedy and beam search decoding,
encoder weights and freezing, and the vocabulary."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from rlgen.vision.backbones import Backbone, FeatureInfo, create_model, register_backbone
from rlgen.vision.backbones.weights import WeightsError
from rlgen.vision.captioning import (
    CaptionModel,
    Vocabulary,
    beam_search_decode,
    build_caption_model,
    caption_loss,
    greedy_decode,
    sequence_log_probs,
    target_mask,
    tokenize,
    trim_captions,
)
from rlgen.vision.captioning.vocab import END_INDEX, PAD_INDEX, START_INDEX, UNK_INDEX
from rlgen.vision.transfer import is_held_in_eval

CAPTIONS = [
    "A red circle left of a blue square.",
    "a blue square right of a red circle",
    "There is a green triangle above a white circle!",
    "the white circle is below the green triangle",
]


class TinyCNN(Backbone):
    """Two stride-2 conv stages with batch norm: a plugin-style backbone."""

    def __init__(self, in_channels: int = 3):
        super().__init__()
        self.in_channels = in_channels
        self.stages = nn.ModuleList([
            nn.Sequential(nn.Conv2d(in_channels, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU()),
            nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU()),
        ])
        self.feature_info = [FeatureInfo("s1", 8, 2), FeatureInfo("s2", 16, 4)]


@pytest.fixture
def vocab() -> Vocabulary:
    return Vocabulary.build(CAPTIONS)


def make_model(vocab_size: int, rnn: str = "lstm", num_layers: int = 1, dropout: float = 0.0,
               seed: int = 0) -> CaptionModel:
    torch.manual_seed(seed)
    model = CaptionModel(TinyCNN(), vocab_size, embed_dim=16, hidden_dim=24, rnn=rnn,
                         num_layers=num_layers, dropout=dropout)
    with torch.no_grad():  # peaky, image-dependent distributions, so decoding choices matter
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.6)
    return model


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


# -- teacher forcing ---------------------------------------------------------------------------


@pytest.mark.parametrize("rnn,num_layers", [("lstm", 1), ("gru", 1), ("lstm", 2)])
def test_forward_shapes_loss_and_gradients(vocab, rnn, num_layers):
    model = make_model(len(vocab), rnn, num_layers, dropout=0.5)
    tokens, lengths = vocab.encode_batch(CAPTIONS)
    logits = model(images(4), tokens, lengths)
    assert logits.shape == (4, tokens.shape[1] - 1, len(vocab))
    # Positions past each caption's end are not computed (zeros).
    for row, n in enumerate(lengths.tolist()):
        assert logits[row, n - 1:].abs().sum() == 0 and logits[row, : n - 1].abs().sum() > 0
    loss = caption_loss(logits, tokens, lengths)
    assert loss.ndim == 0 and math.isfinite(loss.item())
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_padding_never_changes_the_loss(vocab):
    model = make_model(len(vocab), dropout=0.5).train()  # dropout on: masks must not move
    x = images(4)
    tokens, lengths = vocab.encode_batch(CAPTIONS)
    torch.manual_seed(1)
    logits = model(x, tokens, lengths)
    loss = caption_loss(logits, tokens, lengths)
    # Longer padding, holding arbitrary token ids, where no target is.
    wider = torch.randint(0, len(vocab), (4, tokens.shape[1] + 5))
    wider[:, : tokens.shape[1]] = tokens
    for row, n in enumerate(lengths.tolist()):
        wider[row, n:] = torch.randint(0, len(vocab), (wider.shape[1] - n,))
    torch.manual_seed(1)
    wider_logits = model(x, wider, lengths)
    assert torch.equal(caption_loss(wider_logits, wider, lengths), loss)
    assert torch.equal(wider_logits[:, : logits.shape[1]], logits)
    # ...while a real token does change it (the comparison above is not vacuous).
    changed = tokens.clone()
    changed[0, 2] = (changed[0, 2] + 1) % len(vocab)
    torch.manual_seed(1)
    assert caption_loss(model(x, changed, lengths), changed, lengths) != loss


def test_the_image_is_the_first_input_and_logits_line_up_with_the_next_word(vocab):
    # forward (packed, teacher forcing) == feeding the image once, then <start>, w1, ... one
    # step at a time: logits[:, t] predicts captions[:, t + 1].
    model = make_model(len(vocab), num_layers=2).eval()
    x = images(4)
    tokens, lengths = vocab.encode_batch(CAPTIONS)
    with torch.no_grad():
        logits = model(x, tokens, lengths)
        state = model.init_state(x)
        for t in range(tokens.shape[1] - 1):
            log_probs, state = model.step(tokens[:, t], state)
            real = lengths - 1 > t
            torch.testing.assert_close(log_probs[real], logits[real, t].log_softmax(-1))
    # The first target is w1, not <start>: the image step predicts nothing.
    assert (tokens[:, 0] == START_INDEX).all()
    mask = target_mask(lengths, tokens.shape[1] - 1)
    assert mask.sum() == (lengths - 1).sum()
    assert caption_loss(logits, tokens, lengths) == torch.nn.functional.cross_entropy(
        logits[mask], tokens[:, 1:][mask])


def test_bad_caption_batches_are_refused(vocab):
    model = make_model(len(vocab))
    tokens, lengths = vocab.encode_batch(CAPTIONS)
    with pytest.raises(ValueError, match="lengths must be in 2.."):
        model(images(4), tokens, lengths + 1)
    with pytest.raises(ValueError, match="4 images"):
        model(images(4), tokens[:3], lengths[:3])


# -- decoding ----------------------------------------------------------------------------------


def test_beam_size_one_is_greedy(vocab):
    model = make_model(len(vocab), num_layers=2, seed=4).eval()
    x = images(6)
    greedy, greedy_lp = model.greedy(x, max_length=7, return_log_probs=True)
    beams = model.beam_search(x, beam_size=1, max_length=7)
    assert [b[0][0] for b in beams] == trim_captions(greedy)
    assert [b[0][1] for b in beams] == pytest.approx(greedy_lp.tolist(), abs=1e-9)
    assert len({tuple(c) for c in trim_captions(greedy)}) > 1  # captions depend on the image
    assert {len(c) < 7 for c in trim_captions(greedy)} == {True, False}  # ended and cut short
    assert model.generate(x, beam_size=1, max_length=7) == trim_captions(greedy)


# A hand-built decoder: the next word depends on the previous one only, with probabilities
# set by hand. Tokens: 0 <pad>, 1 <start>, 2 <end>, 3 "A", 4 "B".
TABLE = torch.tensor([
    [0.0, 0.0, 1.0, 0.0, 0.0],   # after <pad> (unused)
    [0.0, 0.0, 0.1, 0.5, 0.4],   # after <start>: A is the likeliest first word...
    [0.0, 0.0, 1.0, 0.0, 0.0],   # after <end> (unused)
    [0.0, 0.0, 0.4, 0.3, 0.3],   # ...but A, <end> has p = 0.5 * 0.4 = 0.20,
    [0.0, 0.0, 0.9, 0.05, 0.05], # while B, <end> has p = 0.4 * 0.9 = 0.36.
])


def markov_step(tables: torch.Tensor):
    """A step function over per-image transition tables (B, V, V); the state holds the
    image index (dim 1 = batch)."""
    logs = tables.log()

    def step(tokens, state):
        return logs[state[0][0], tokens], state

    return step


def test_beam_search_finds_the_caption_greedy_misses():
    step, state = markov_step(TABLE[None]), (torch.zeros(1, 1, dtype=torch.int64),)
    greedy, greedy_lp = greedy_decode(step, state, 1, max_length=5)
    assert trim_captions(greedy) == [[3]] and greedy_lp.item() == pytest.approx(math.log(0.2))
    found = beam_search_decode(step, state, 1, beam_size=2, max_length=5)[0]
    assert found[0][0] == [4] and found[0][1] == pytest.approx(math.log(0.36))
    assert found[1][0] == [3] and found[1][1] == pytest.approx(math.log(0.2))

    class HandBuilt(CaptionModel):  # the same decoder behind the model's API
        def init_state(self, images):
            return (torch.zeros(1, images.shape[0], dtype=torch.int64),)

        def step(self, tokens, state):
            return TABLE.log()[tokens], state

    model = HandBuilt(TinyCNN(), 5).eval()
    assert model.generate(images(2), beam_size=1) == [[3], [3]]
    assert model.generate(images(2), beam_size=2) == [[4], [4]]


def tree_decoder(tables: torch.Tensor):
    """A step function whose next-word distribution depends on the whole prefix: row
    ``code % M`` of image b's random table ``tables[b]`` (M, V), the code encoding the prefix
    (no two prefixes of up to 5 tokens share a row). State: (image index, code), batch at
    dim 1."""
    logs, (m, v) = tables.log(), tables.shape[1:]

    def step(tokens, state):
        image, code = state
        code = (code * v + tokens) % m
        return logs[image[0], code[0]], (image, code)

    return step


def exhaustive(step, image: int, max_length: int, alpha: float, top: int):
    """The best captions among all of them, by brute force: words then <end> (length = words
    + 1 <= max_length), or max_length words cut short; score log p / length ** alpha."""
    scored = []  # (words, log p, length in tokens)
    for n_words in range(max_length + 1):
        for words in itertools.product([3, 4, 5], repeat=n_words):
            state = (torch.tensor([[image]]), torch.zeros(1, 1, dtype=torch.int64))
            lp, fed = 0.0, [START_INDEX, *words]
            for t, token in enumerate(fed):
                log_probs, state = step(torch.tensor([token]), state)
                nxt = words[t] if t < n_words else END_INDEX
                if t < n_words or n_words < max_length:
                    lp += log_probs[0, nxt].item()
            length = n_words + 1 if n_words < max_length else n_words
            scored.append((list(words), lp, length))
    scored.sort(key=lambda s: -s[1] / s[2] ** alpha)
    return [(w, lp) for w, lp, _ in scored[:top]]


@pytest.mark.parametrize("alpha", [0.0, 0.7, 1.0])
def test_wide_beam_search_is_exact_with_length_normalisation(alpha):
    # With a beam wider than the number of prefixes, beam search must return the exact best
    # captions under score = log p / length ** alpha.
    gen = torch.Generator().manual_seed(3)
    tables = torch.rand(4, 10007, 6, generator=gen, dtype=torch.float64) ** 3
    tables[:, :, [PAD_INDEX, START_INDEX]] = 0
    tables /= tables.sum(-1, keepdim=True)
    step = tree_decoder(tables)  # four images, four random decoders
    state = (torch.arange(4)[None], torch.zeros(1, 4, dtype=torch.int64))
    winners = []
    for num_return in (6, 1):  # 1: the early stop has the least margin
        found = beam_search_decode(step, state, 4, beam_size=64, max_length=4,
                                   length_penalty=alpha, num_return=num_return)
        for image in range(4):
            expected = exhaustive(step, image, 4, alpha, num_return)
            assert [w for w, _ in found[image]] == [w for w, _ in expected]
            assert [lp for _, lp in found[image]] == pytest.approx([lp for _, lp in expected],
                                                                   abs=1e-12)
            winners.append(expected[0][0])
    if alpha == 0.0:  # the plain log-probability favours short captions
        assert min(len(w) for w in winners) < 3
    if alpha == 1.0:  # normalised, longer ones win here
        assert max(len(w) for w in winners) >= 3


def test_batched_beam_search_matches_one_image_at_a_time_and_teacher_forcing(vocab):
    model = make_model(len(vocab), rnn="gru", num_layers=2, seed=2).eval()
    x = images(3, seed=5)
    max_length = 6
    batched = model.beam_search(x, beam_size=3, max_length=max_length, length_penalty=0.5)
    for i in range(3):
        alone = model.beam_search(x[i : i + 1], beam_size=3, max_length=max_length,
                                  length_penalty=0.5)[0]
        assert [c for c, _ in alone] == [c for c, _ in batched[i]]
        assert [lp for _, lp in alone] == pytest.approx([lp for _, lp in batched[i]], abs=1e-5)
        assert len(batched[i]) == 3
        assert len({tuple(c) for c, _ in batched[i]}) == 3
        scores = [lp / (len(c) + (len(c) < max_length)) ** 0.5 for c, lp in batched[i]]
        assert scores == sorted(scores, reverse=True)
        # Each returned log-probability is the model's own, computed by teacher forcing.
        for caption, lp in batched[i]:
            ended = len(caption) < max_length
            ids = [START_INDEX, *caption] + [END_INDEX] * ended
            tokens = torch.tensor([ids])
            with torch.no_grad():
                logits = model(x[i : i + 1], tokens, torch.tensor([len(ids)]))
            assert sequence_log_probs(logits, tokens, [len(ids)]).item() == pytest.approx(
                lp, abs=1e-4)
            assert PAD_INDEX not in caption and START_INDEX not in caption
    lengths = [len(c) for found in batched for c, _ in found]
    assert min(lengths) < max_length and max(lengths) == max_length  # ended and cut short


# -- building: encoders by name, weights, freezing ---------------------------------------------


@pytest.fixture
def tiny_registered():
    name = "test_captioning_tiny_cnn"
    register_backbone(name)(TinyCNN)
    try:
        yield name
    finally:
        from rlgen.registry import BACKBONES

        BACKBONES.unregister(name)


def test_build_by_name_loads_classifier_weights_in_both_layouts(vocab, tiny_registered, tmp_path):
    # rlgen's BackboneClassifier layout: backbone.* and a head.
    trunk = TinyCNN()
    rlgen_state = {f"backbone.{k}": v.clone() for k, v in trunk.state_dict().items()}
    rlgen_state["fc.weight"] = torch.zeros(10, 16)
    torch.save({"state_dict": rlgen_state}, tmp_path / "classifier.pt")
    model = build_caption_model(tiny_registered, vocab, embed_dim=16, hidden_dim=16,
                                weights=tmp_path / "classifier.pt")
    for k, v in trunk.state_dict().items():
        assert torch.equal(model.encoder.backbone.state_dict()[k], v), k
    assert model.vocab_size == len(vocab) and model.config["encoder"] == tiny_registered
    # torchvision's layout (the create_model classifiers): trunk keys at the top, fc head.
    classifier = create_model("resnet18", num_classes=7)
    model = build_caption_model("resnet18", vocab, embed_dim=16, hidden_dim=16,
                                weights=classifier.state_dict(), normalize="imagenet")
    assert torch.equal(model.encoder.backbone.conv1.weight, classifier.conv1.weight)
    assert torch.equal(model.encoder.backbone.layer4[1].bn2.running_var,
                       classifier.layer4[1].bn2.running_var)
    assert model.encoder.proj.in_features == 512
    assert model.encoder.mean.tolist() == pytest.approx([0.485, 0.456, 0.406])
    model.eval()(images(2).repeat(1, 1, 2, 2), *vocab.encode_batch(CAPTIONS[:2]))
    # A file for another network is refused, naming the keys.
    with pytest.raises(WeightsError, match="missing keys"):
        build_caption_model(tiny_registered, vocab, weights=classifier.state_dict())


def test_freeze_the_backbone_or_fine_tune_from_a_stage(vocab, tiny_registered):
    model = build_caption_model(tiny_registered, vocab, embed_dim=16, hidden_dim=16,
                                freeze="backbone")
    backbone = model.encoder.backbone
    assert not any(p.requires_grad for p in backbone.parameters())
    assert all(p.requires_grad for n, p in model.named_parameters()
               if not n.startswith("encoder.backbone."))
    model = build_caption_model(tiny_registered, vocab, embed_dim=16, hidden_dim=16, freeze=1)
    first, second = model.encoder.backbone.stages
    assert not any(p.requires_grad for p in first.parameters())
    assert all(p.requires_grad for p in second.parameters())
    model.train()
    assert is_held_in_eval(first[1]) and not is_held_in_eval(second[1])
    before = first[1].running_mean.clone()
    tokens, lengths = vocab.encode_batch(CAPTIONS)
    caption_loss(model(images(4), tokens, lengths), tokens, lengths).backward()
    assert torch.equal(first[1].running_mean, before)  # the frozen stage's statistics stay
    assert first[0].weight.grad is None and second[0].weight.grad is not None
    # A built module works as the encoder too (anything with the backbone contract).
    model = build_caption_model(TinyCNN(), 50, embed_dim=8, hidden_dim=8, rnn="gru")
    assert model.fc.out_features == 50 and isinstance(model.rnn, nn.GRU)


# -- vocabulary --------------------------------------------------------------------------------


def test_tokenizer_lower_cases_and_splits_punctuation():
    assert tokenize("A man's hat, RED.") == ["a", "man", "'", "s", "hat", ",", "red", "."]
    assert tokenize("A man's hat, RED.", keep_punctuation=False) == ["a", "man", "s", "hat",
                                                                     "red"]
    assert tokenize("  two\tdogs\n") == ["two", "dogs"]


def test_vocabulary_build_encode_decode_and_checkpoint_round_trip(tmp_path):
    per_image = [["a dog runs", "a dog"], ["a cat sleeps."]]
    vocab = Vocabulary.build(per_image, min_count=1)
    assert vocab.tokens[:4] == ["<pad>", "<start>", "<end>", "<unk>"]
    # By count, then alphabetically: a (3), dog (2), then ., cat, runs, sleeps (1 each).
    assert vocab.tokens[4:] == ["a", "dog", ".", "cat", "runs", "sleeps"]
    assert Vocabulary.build(per_image, min_count=2).tokens[4:] == ["a", "dog"]
    assert Vocabulary.build(per_image, max_size=3).tokens[4:] == ["a", "dog", "."]
    ids = vocab.encode("A dog sleeps on the mat.")
    assert ids[0] == START_INDEX and ids[-1] == END_INDEX and ids.count(UNK_INDEX) == 3
    assert vocab.decode(ids) == "a dog sleeps <unk> <unk> <unk> ."
    assert vocab.decode(vocab.encode("a cat runs")) == "a cat runs"
    assert vocab.decode([START_INDEX, 4, 5, END_INDEX, 7, PAD_INDEX]) == "a dog"  # stops at end
    assert vocab.encode("a dog runs", max_length=2) == [START_INDEX, 4, 5, END_INDEX]
    tokens, lengths = vocab.encode_batch(["a dog", "a cat runs ."])
    assert tokens.tolist() == [[1, 4, 5, 2, 0, 0], [1, 4, 7, 8, 6, 2]]
    assert lengths.tolist() == [4, 6]
    torch.save({"vocab": vocab.state_dict()}, tmp_path / "ckpt.pt")
    restored = Vocabulary.from_state(torch.load(tmp_path / "ckpt.pt", weights_only=True)["vocab"])
    assert restored == vocab and restored.encode("a cat") == vocab.encode("a cat")
    with pytest.raises(ValueError, match="not a caption vocabulary"):
        Vocabulary.from_state({"tokens": ["a", "b"]})
