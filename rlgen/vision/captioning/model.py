"""Neural Image Caption (NIC): Vinyals, Toshev, Bengio, Erhan, "Show and Tell: A Neural Image
Caption Generator" (CVPR 2015), on any registered backbone.

The image goes through a CNN (``encoder``, any backbone of the registry, default ``resnet50``,
or a built one, a user's plugin too), whose last feature map is average-pooled and projected
by a linear layer to the word-embedding size. A recurrent decoder (LSTM as in the paper, or a
GRU; ``num_layers`` stacked) sees that image vector ONCE, as its first input; then
``<start>`` and the caption's words, one per step, each step predicting the next word:

    x_{-1} = W_I CNN(I),   x_t = W_e S_t (t = 0 .. N-1),   p_{t+1} = softmax(W_o h_t)
    inputs   image  <start>  w1  ...  wn
    targets    -     w1      w2  ...  <end>       (the image step predicts nothing)

Embedding and memory sizes 512 and dropout on the RNN's inputs and outputs (and between
stacked layers) follow the paper; the embedding and output layers start uniform in
[-0.08, 0.08] and the LSTM's forget-gate bias at 1 as in its TensorFlow release (im2txt's
``BasicLSTMCell``), so the image, seen only at the first step, is not halved at every word.

``image_norm`` (default on) adds a batch norm after the image projection: the image vector
then reaches the decoder at unit scale from the first step instead of at the scale of a fresh
linear layer on pooled features. Trained from scratch on ``caption-shapes`` (32 px, a small
CNN, 300 steps of 32 captions) the decoder without it still wrote one caption for every image
(BLEU-4 0.385, that caption's score), with it 18-31 different captions and BLEU-4 0.45-0.48;
``image_norm=False`` is the paper's plain projection.

Training is teacher forcing on packed sequences (``torch.nn.utils.rnn.pack_padded_sequence``):
the RNN and the vocabulary-sized output layer only run on real tokens, so padding costs no
compute and can never change the loss; dropout is applied to the packed tensors too, so even
the random masks do not depend on how much padding a batch carries.

Decoding (the model in ``eval()`` mode; under ``torch.no_grad()``), batched over images, a
Python loop over time steps only:

- :meth:`CaptionModel.greedy`: the most likely next word at each step;
- :meth:`CaptionModel.beam_search`: ``beam_size`` hypotheses per image; a hypothesis ends at
  ``<end>`` or after ``max_length`` tokens; ranked by the length-normalised score
  ``log p(caption) / length ** length_penalty`` (``length`` = tokens generated, ``<end>``
  included; ``length_penalty=0``: the plain log-probability, which favours short captions;
  ``1``: the mean log-probability per token). Returns the best captions per image with their
  (unnormalised) log-probabilities. The search stops early once no open hypothesis can beat
  the finished ones (its log-probability can only fall, and its length at most reach
  ``max_length``).

``<pad>`` and ``<start>`` are never generated. Build with :func:`build_caption_model` (a
name, a :class:`~rlgen.vision.captioning.vocab.Vocabulary`, optional classifier weights and
a freeze spec).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from rlgen.vision.backbones import create_backbone
from rlgen.vision.backbones.weights import (
    MAX_LISTED,
    LoadReport,
    WeightsError,
    compare_state_dicts,
    read_state_dict,
)
from rlgen.vision.captioning.vocab import END_INDEX, PAD_INDEX, START_INDEX, Vocabulary
from rlgen.vision.transfer import FreezeError, freeze, keep_frozen_bn_in_eval

#: torchvision's ImageNet statistics (inputs in [0, 1]), for ``normalize="imagenet"``
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RNN_TYPES = {"lstm": nn.LSTM, "gru": nn.GRU}

#: a decoder state: tensors whose dim 1 is the batch (h, or (h, c) for an LSTM)
State = tuple[torch.Tensor, ...]
#: one decoding step: (previous tokens (N,), state) -> (log-probabilities (N, V), state)
StepFn = Callable[[torch.Tensor, State], tuple[torch.Tensor, State]]
#: beam search's result: per image, (token ids without <start>/<end>, log-probability) pairs
Hypotheses = list[list[tuple[list[int], float]]]


# --------------------------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------------------------


def _feature_channels(backbone: nn.Module) -> int:
    info = getattr(backbone, "feature_info", None)
    if info:
        return int(info[-1].channels)
    channels = getattr(backbone, "out_channels", None)
    if isinstance(channels, int):
        return channels
    raise TypeError(
        f"captioning encoder {type(backbone).__name__} follows no backbone contract: it needs "
        "forward_features and feature_info (or out_channels) to size the image projection"
    )


class CaptionEncoder(nn.Module):
    """Backbone -> global average pool -> linear to ``embed_dim``: ``(N, C, H, W) -> (N, E)``.

    ``mean`` / ``std`` (per input channel, inputs in [0, 1]) standardise the images first;
    they are buffers (saved in the state dict), identity by default. ``norm``: batch norm on
    the projected vector (``self.norm``; identity when off).
    """

    def __init__(self, backbone: nn.Module, embed_dim: int = 512, *,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 norm: bool = False):
        super().__init__()
        if not callable(getattr(backbone, "forward_features", None)):
            raise TypeError(
                f"captioning encoder must be a backbone (an nn.Module with forward_features), "
                f"got {type(backbone).__name__}"
            )
        self.backbone = backbone
        self.feature_channels = _feature_channels(backbone)
        self.embed_dim = int(embed_dim)
        self.proj = nn.Linear(self.feature_channels, self.embed_dim)
        self.norm = nn.BatchNorm1d(self.embed_dim) if norm else nn.Identity()
        channels = int(getattr(backbone, "in_channels", 3))
        mean = torch.zeros(channels) if mean is None else torch.as_tensor(mean, dtype=torch.float)
        std = torch.ones(channels) if std is None else torch.as_tensor(std, dtype=torch.float)
        if mean.shape != (channels,) or std.shape != (channels,) or (std <= 0).any():
            raise ValueError(
                f"mean and std need one value per input channel ({channels}), std > 0; "
                f"got {mean.tolist()} and {std.tolist()}"
            )
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() == 4:
            shape = (1, -1, 1, 1)
            images = (images - self.mean.view(shape).to(images.dtype)) \
                / self.std.view(shape).to(images.dtype)
        features = self.backbone.forward_features(images)
        if features.dim() > 2:  # (N, C, H, W): global average pool
            features = features.flatten(2).mean(-1)
        return self.norm(self.proj(features))


def load_encoder_weights(backbone: nn.Module, weights: str | os.PathLike | Mapping) -> LoadReport:
    """Load a classifier checkpoint into a bare backbone; returns what was left out.

    ``weights``: a path, a state dict, an rlgen run checkpoint or ``"torchvision:NAME"``
    (see :func:`rlgen.vision.backbones.weights.read_state_dict`). Key layouts: torchvision's
    (``conv1.weight``, ``layer1...``, ``fc.*``: the ``create_model`` classifiers share it),
    rlgen's ``BackboneClassifier`` (``backbone.*``, head ``fc.*``), or a caption model's
    (``encoder.backbone.*``). Every tensor of the backbone must be in the file with its shape
    (else a ``WeightsError`` naming the keys); the classifier head and anything else is left
    out and listed in the report's ``unexpected``.
    """
    state = read_state_dict(weights)
    for prefix in ("encoder.backbone.", "backbone."):
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            break
    report = compare_state_dicts(backbone, state)
    # Files saved before batch norms counted their batches lack num_batches_tracked.
    report.missing = [k for k in report.missing if not k.endswith("num_batches_tracked")]
    if report.missing or report.mismatched:
        name = getattr(backbone, "name", type(backbone).__name__)
        what = f"weights file {str(weights)!r}" if isinstance(weights, str | os.PathLike) \
            else "state dict"
        lines = [f"{what} does not fit captioning encoder {name!r}:"]
        if report.missing:
            lines.append(f"  {len(report.missing)} missing keys: {report.missing[:MAX_LISTED]}")
        lines += [f"  {k}: model {list(a)} vs file {list(b)}"
                  for k, a, b in report.mismatched[:MAX_LISTED]]
        raise WeightsError("\n".join(lines))
    own = backbone.state_dict()
    backbone.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return report


def freeze_encoder(encoder: CaptionEncoder, spec: str | int | bool | None) -> list[str]:
    """Freeze (part of) the encoder's backbone; the projection and decoder always train.

    ``spec``: None / False / ``"none"`` (everything trains), True / ``"backbone"`` (the whole
    backbone frozen: a fixed feature extractor, NIC's first phase), ``"stages:N"`` or an int
    ``N`` (the first ``N`` stages of ``feature_info`` frozen: fine-tuning from stage ``N`` on;
    see :mod:`rlgen.vision.transfer`). Frozen batch norms stay in eval mode. Returns the
    frozen modules' names."""
    backbone = encoder.backbone
    if spec is None or spec is False:
        spec = "none"
    elif spec is True:
        spec = "backbone"
    elif isinstance(spec, int):
        spec = f"stages:{spec}"
    if spec in ("none", "backbone"):
        # Done here rather than by transfer.freeze, which needs an rlgen Backbone: a plugin's
        # module can be frozen whole too.
        for p in backbone.parameters():
            p.requires_grad_(spec == "none")
        keep_frozen_bn_in_eval(backbone)
        return ["backbone"] if spec == "backbone" else []
    if not str(spec).startswith("stages:"):
        raise FreezeError(
            f"encoder freeze spec must be None, 'none', 'backbone', 'stages:N' or an int N, "
            f"got {spec!r}"
        )
    return [f"backbone.{n}" if n else "backbone" for n in freeze(backbone, spec)]


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class CaptionModel(nn.Module):
    """NIC: a :class:`CaptionEncoder` and a recurrent decoder (see the module docstring).

    ``encoder``: a backbone (wrapped in a :class:`CaptionEncoder` projecting to ``embed_dim``,
    standardised with ``mean`` / ``std`` if given) or a ready ``CaptionEncoder``.
    ``rnn``: ``"lstm"`` or ``"gru"``; ``num_layers`` stacked; ``dropout`` on the RNN's
    inputs (image and words), outputs and between layers. ``image_norm``: batch norm on the
    image vector (see the module docstring; with a built ``CaptionEncoder``, its own). The
    special token indices default to the :class:`~rlgen.vision.captioning.vocab.Vocabulary`'s.

    Attributes: ``encoder``, ``embed`` (``nn.Embedding``), ``rnn``, ``fc`` (the output layer),
    ``vocab_size``, ``pad_index``, ``start_index``, ``end_index``.
    """

    def __init__(
        self,
        encoder: nn.Module,
        vocab_size: int,
        embed_dim: int = 512,
        hidden_dim: int = 512,
        rnn: str = "lstm",
        num_layers: int = 1,
        dropout: float = 0.5,
        *,
        pad_index: int = PAD_INDEX,
        start_index: int = START_INDEX,
        end_index: int = END_INDEX,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        image_norm: bool = False,
    ):
        super().__init__()
        if rnn not in RNN_TYPES:
            raise ValueError(f"rnn must be one of {', '.join(RNN_TYPES)}, got {rnn!r}")
        specials = {pad_index, start_index, end_index}
        if len(specials) != 3 or not all(0 <= i < vocab_size for i in specials):
            raise ValueError(
                f"vocab_size {vocab_size} must hold distinct pad, start and end indices "
                f"({pad_index}, {start_index}, {end_index})"
            )
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if isinstance(encoder, CaptionEncoder):
            if encoder.embed_dim != embed_dim:
                raise ValueError(f"the encoder projects to {encoder.embed_dim}, but "
                                 f"embed_dim={embed_dim}")
        else:
            encoder = CaptionEncoder(encoder, embed_dim, mean=mean, std=std, norm=image_norm)
        self.encoder = encoder
        self.vocab_size = int(vocab_size)
        self.embed_dim, self.hidden_dim, self.num_layers = embed_dim, hidden_dim, num_layers
        self.rnn_type = rnn
        self.pad_index, self.start_index, self.end_index = pad_index, start_index, end_index
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_index)
        self.rnn = RNN_TYPES[rnn](embed_dim, hidden_dim, num_layers, batch_first=True,
                                  dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden_dim, vocab_size)
        for layer in (self.embed, self.fc):  # im2txt's initializer
            nn.init.uniform_(layer.weight, -0.08, 0.08)
        nn.init.zeros_(self.fc.bias)
        with torch.no_grad():
            self.embed.weight[pad_index].zero_()
            if rnn == "lstm":  # gates i, f, g, o: the forget gate's two biases sum to 1
                for name, bias in self.rnn.named_parameters():
                    if name.startswith("bias_"):
                        bias[hidden_dim:2 * hidden_dim] = 1.0 if "_ih" in name else 0.0

    # -- the recurrent state, as a tuple of (layers, N, H) tensors ----------------------------

    def _rnn_state(self, state: State):
        return state if self.rnn_type == "lstm" else state[0]

    @staticmethod
    def _as_tuple(state) -> State:
        return tuple(state) if isinstance(state, tuple | list) else (state,)

    def init_state(self, images: torch.Tensor) -> State:
        """Encode the images and run the image step: the state ``<start>`` is fed into."""
        features = self.dropout(self.encoder(images))
        _, state = self.rnn(features[:, None])
        return self._as_tuple(state)

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One decoding step: previous tokens ``(N,)`` -> (log-probabilities ``(N, V)``
        (float32), next state)."""
        x = self.dropout(self.embed(tokens))[:, None]
        out, state = self.rnn(x, self._rnn_state(state))
        logits = self.fc(self.dropout(out[:, 0]))
        return F.log_softmax(logits.float(), dim=-1), self._as_tuple(state)

    # -- training ------------------------------------------------------------------------------

    def forward(self, images: torch.Tensor, captions: torch.Tensor,
                lengths: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Teacher forcing: logits ``(B, T - 1, V)`` aligned with the targets
        ``captions[:, 1:]``.

        ``captions``: int64 ``(B, T)`` rows ``<start> w1 .. wn <end>`` then any padding (see
        ``Vocabulary.encode_batch``); ``lengths``: ``(B,)`` unpadded lengths ``n + 2``. Only
        the first ``lengths - 1`` target positions of each row are computed; the others are
        0 (give them to :func:`caption_loss`, which leaves them out).
        """
        lengths = _check_batch(captions, lengths, images.shape[0])
        state = self.init_state(images)
        steps = (lengths - 1).cpu()
        embedded = self.embed(captions[:, :-1])
        packed = pack_padded_sequence(embedded, steps, batch_first=True, enforce_sorted=False)
        packed = packed._replace(data=self.dropout(packed.data))
        out, _ = self.rnn(packed, self._rnn_state(state))
        logits = self.fc(self.dropout(out.data))  # real tokens only
        padded, _ = pad_packed_sequence(out._replace(data=logits), batch_first=True,
                                        total_length=captions.shape[1] - 1)
        return padded

    # -- decoding ------------------------------------------------------------------------------

    def _masked_step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        log_probs, state = self.step(tokens, state)
        log_probs[:, [self.pad_index, self.start_index]] = -math.inf
        return log_probs, state

    @torch.no_grad()
    def greedy(self, images: torch.Tensor, max_length: int = 20, *,
               return_log_probs: bool = False):
        """Greedy captions: int64 ``(B, L)``, ``L <= max_length`` (steps until every caption
        ended), each row the generated tokens, ``<end>`` included where one was generated,
        then ``<pad>``. ``return_log_probs``: also their log-probabilities ``(B,)``."""
        tokens, log_probs = greedy_decode(
            self._masked_step, self.init_state(images), images.shape[0], max_length,
            start_index=self.start_index, end_index=self.end_index, pad_index=self.pad_index)
        return (tokens, log_probs) if return_log_probs else tokens

    @torch.no_grad()
    def beam_search(self, images: torch.Tensor, beam_size: int = 3, max_length: int = 20,
                    length_penalty: float = 0.0, num_return: int | None = None) -> Hypotheses:
        """Beam search, batched over the images: per image, the ``num_return`` (default
        ``beam_size``) best captions as ``(token ids, log-probability)``, best first by
        ``log_prob / length ** length_penalty``; token ids without ``<start>`` and ``<end>``
        (``vocab.decode`` turns them into text)."""
        return beam_search_decode(
            self._masked_step, self.init_state(images), images.shape[0], beam_size, max_length,
            length_penalty, num_return, start_index=self.start_index, end_index=self.end_index,
            pad_index=self.pad_index)

    @torch.no_grad()
    def generate(self, images: torch.Tensor, beam_size: int = 1, max_length: int = 20,
                 length_penalty: float = 0.0) -> list[list[int]]:
        """The best caption per image as token ids (no specials): greedy for ``beam_size=1``,
        else the beam search's first."""
        if beam_size == 1:
            return trim_captions(self.greedy(images, max_length), self.end_index,
                                 self.pad_index)
        found = self.beam_search(images, beam_size, max_length, length_penalty, num_return=1)
        return [hyps[0][0] for hyps in found]


def _check_batch(captions: torch.Tensor, lengths, batch: int) -> torch.Tensor:
    if captions.dim() != 2 or captions.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"captions must be integer token ids (B, T), got {captions.dtype} "
                         f"{tuple(captions.shape)}")
    lengths = torch.as_tensor(lengths, dtype=torch.int64).reshape(-1)
    if captions.shape[0] != batch or lengths.shape[0] != batch:
        raise ValueError(f"{batch} images but captions {tuple(captions.shape)} and "
                         f"{lengths.shape[0]} lengths; give one caption per image")
    if len(lengths) and (lengths.min() < 2 or lengths.max() > captions.shape[1]):
        raise ValueError(
            f"caption lengths must be in 2..{captions.shape[1]} (<start> and <end> included, "
            f"at most the padded width), got {lengths.min().item()}..{lengths.max().item()}"
        )
    return lengths


def target_mask(lengths: torch.Tensor | Sequence[int], width: int) -> torch.Tensor:
    """Boolean ``(B, width)``: which positions of the logits / ``captions[:, 1:]`` are real
    targets (the first ``lengths - 1`` of each row)."""
    lengths = torch.as_tensor(lengths, dtype=torch.int64).reshape(-1, 1)
    return torch.arange(width, device=lengths.device) < (lengths - 1)


def caption_loss(logits: torch.Tensor, captions: torch.Tensor,
                 lengths: torch.Tensor | Sequence[int], label_smoothing: float = 0.0
                 ) -> torch.Tensor:
    """Mean cross-entropy per real target token (NIC's loss, averaged over words): ``logits``
    from :meth:`CaptionModel.forward`, the same ``captions`` (B, T) and ``lengths``; the
    targets are ``captions[:, 1:]``, padding positions are left out (any padding, of any
    value, gives the same loss)."""
    targets = captions[:, 1:].long()
    if logits.shape[:2] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not line up with captions[:, 1:] "
                         f"{tuple(targets.shape)}")
    mask = target_mask(torch.as_tensor(lengths).to(logits.device), targets.shape[1])
    return F.cross_entropy(logits[mask].float(), targets[mask], label_smoothing=label_smoothing)


def sequence_log_probs(logits: torch.Tensor, captions: torch.Tensor,
                       lengths: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """``(B,)`` log-probability of each caption (its words and ``<end>``) under the teacher-
    forced ``logits`` (float64 sum of the real target positions)."""
    targets = captions[:, 1:].long()
    mask = target_mask(torch.as_tensor(lengths).to(logits.device), targets.shape[1])
    picked = F.log_softmax(logits.double(), -1).gather(-1, targets[..., None])[..., 0]
    return (picked * mask).sum(1)


def trim_captions(tokens: torch.Tensor, end_index: int = END_INDEX,
                  pad_index: int = PAD_INDEX) -> list[list[int]]:
    """Rows of generated ids -> lists of ids before the first ``<end>`` (``<pad>`` dropped)."""
    out = []
    for row in tokens.tolist():
        ids = row[: row.index(end_index)] if end_index in row else row
        out.append([i for i in ids if i != pad_index])
    return out


# --------------------------------------------------------------------------------------------
# Decoding, for any step function (the model's, or a hand-built one in the tests)
# --------------------------------------------------------------------------------------------


def greedy_decode(step: StepFn, state: State, batch_size: int, max_length: int = 20, *,
                  start_index: int = START_INDEX, end_index: int = END_INDEX,
                  pad_index: int = PAD_INDEX) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens (B, L), log_probs (B,))``: the argmax token at each step from ``<start>``,
    until every row has produced ``<end>`` or ``max_length`` tokens were generated."""
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    device = state[0].device
    tokens = torch.full((batch_size,), start_index, dtype=torch.int64, device=device)
    out = torch.full((batch_size, max_length), pad_index, dtype=torch.int64, device=device)
    total = torch.zeros(batch_size, dtype=torch.float64, device=device)
    done = torch.zeros(batch_size, dtype=torch.bool, device=device)
    for t in range(max_length):
        log_probs, state = step(tokens, state)
        best, chosen = log_probs.max(-1)
        chosen = torch.where(done, pad_index, chosen)
        total += torch.where(done, 0.0, best.double())
        out[:, t] = chosen
        done |= chosen == end_index
        tokens = chosen
        if bool(done.all()):
            break
    return out[:, : t + 1], total


def beam_search_decode(
    step: StepFn,
    state: State,
    batch_size: int,
    beam_size: int = 3,
    max_length: int = 20,
    length_penalty: float = 0.0,
    num_return: int | None = None,
    *,
    start_index: int = START_INDEX,
    end_index: int = END_INDEX,
    pad_index: int = PAD_INDEX,
) -> Hypotheses:
    """Beam search over ``batch_size`` independent searches at once (see the module
    docstring): ``step`` maps previous tokens ``(B * K,)`` and a state (tensors with the batch
    at dim 1; image ``b``'s beams at rows ``b*K .. b*K + K - 1``) to log-probabilities
    ``(B * K, V)``. Returns, per image, up to ``num_return`` ``(tokens, log_prob)`` pairs,
    best first by ``log_prob / length ** length_penalty``."""
    k = int(beam_size)
    num_return = k if num_return is None else int(num_return)
    if k < 1 or max_length < 1 or not 1 <= num_return <= k:
        raise ValueError(f"need beam_size >= 1, max_length >= 1 and 1 <= num_return <= "
                         f"beam_size; got {beam_size}, {max_length}, {num_return}")
    if length_penalty < 0:
        raise ValueError(f"length_penalty must be >= 0, got {length_penalty}")
    b, device = batch_size, state[0].device
    state = tuple(s.repeat_interleave(k, dim=1) for s in state)
    rows = (torch.arange(b, device=device) * k)[:, None]  # first row of each image's beams
    tokens = torch.full((b * k,), start_index, dtype=torch.int64, device=device)
    # Only beam 0 is open at the start, so the first step does not pick one word k times.
    beam_lp = torch.full((b, k), -math.inf, dtype=torch.float64, device=device)
    beam_lp[:, 0] = 0.0
    history = torch.full((b, k, max_length), pad_index, dtype=torch.int64, device=device)
    # The finished pool: the k best captions ended so far, per image.
    fin_tokens = history.clone()
    fin_lp = torch.full((b, k), -math.inf, dtype=torch.float64, device=device)
    fin_score = fin_lp.clone()
    for t in range(1, max_length + 1):
        log_probs, state = step(tokens, state)
        vocab = log_probs.shape[-1]
        cand = beam_lp[:, :, None] + log_probs.view(b, k, vocab).double()  # (B, K, V)
        # The k best continuations of all open captions; those that are <end> finish (t
        # tokens) and leave their slot empty for this step, as in im2txt's beam search, so
        # beam_size=1 is exactly greedy decoding.
        top_lp, top = cand.view(b, k * vocab).topk(k, dim=1)
        source, word = top // vocab, top % vocab
        history = history.gather(1, source[..., None].expand(-1, -1, max_length))
        history[:, :, t - 1] = word
        ended = word == end_index
        open_lp = top_lp.masked_fill(ended, -math.inf)
        pool_lp = [fin_lp, top_lp.masked_fill(~ended, -math.inf)]
        pool_tokens = [fin_tokens, history]
        if t == max_length:  # out of room: the open captions end here, without <end>
            pool_lp.append(open_lp)
            pool_tokens.append(history)
        lp = torch.cat(pool_lp, 1)
        score = torch.cat([fin_score] + [p / t**length_penalty for p in pool_lp[1:]], 1)
        fin_score, best = score.topk(k, dim=1)
        fin_lp = lp.gather(1, best)
        fin_tokens = torch.cat(pool_tokens, 1).gather(1, best[..., None].expand(-1, -1,
                                                                               max_length))
        beam_lp = open_lp
        if t == max_length:
            break
        # An open caption's log-probability only falls and its length stays <= max_length,
        # so lp / max_length ** alpha bounds any score it can still reach.
        bound = beam_lp.max(1).values / max_length**length_penalty
        if bool((fin_score[:, num_return - 1] >= bound).all()):
            break
        index = (rows + source).reshape(-1)
        state = tuple(s.index_select(1, index) for s in state)
        tokens = word.reshape(-1)
    results: Hypotheses = []
    for ids, lps in zip(fin_tokens[:, :num_return].tolist(), fin_lp[:, :num_return].tolist()):
        found = []
        for row, lp in zip(ids, lps):
            if lp == -math.inf:
                continue
            words = row[: row.index(end_index)] if end_index in row else row
            found.append(([i for i in words if i != pad_index], lp))
        results.append(found)
    return results


# --------------------------------------------------------------------------------------------
# Builder
# --------------------------------------------------------------------------------------------


def build_caption_model(
    encoder: str | nn.Module = "resnet50",
    vocab: Vocabulary | int | None = None,
    embed_dim: int = 512,
    hidden_dim: int = 512,
    rnn: str = "lstm",
    num_layers: int = 1,
    dropout: float = 0.5,
    *,
    weights: str | os.PathLike | Mapping | None = None,
    freeze: str | int | bool | None = None,
    in_channels: int = 3,
    normalize: str | tuple[Sequence[float], Sequence[float]] | None = None,
    image_norm: bool = True,
    **backbone_kwargs,
) -> CaptionModel:
    """A NIC caption model on the backbone ``encoder`` (a registered name, plugins included,
    built with ``in_channels`` and ``backbone_kwargs``; or a built backbone).

    ``vocab``: a :class:`Vocabulary` (its size and special indices) or the vocabulary size.
    ``weights``: classifier weights for the backbone (a file or state dict in torchvision's or
    rlgen's layout, or ``"torchvision:resnet50"``; see :func:`load_encoder_weights`).
    ``freeze``: see :func:`freeze_encoder` (``"backbone"``, ``"stages:N"`` / ``N``, None).
    ``normalize``: None (images go in as they are), ``"imagenet"`` (torchvision's mean and
    std, what its ImageNet weights expect) or ``(mean, std)``. ``image_norm``: batch norm on
    the image vector (on by default here; see the module docstring). ``model.config`` records the
    arguments (with ``encoder`` as a name) for rebuilding from a checkpoint.
    """
    if vocab is None:
        raise ValueError("build_caption_model needs the vocabulary (a Vocabulary, or its size)")
    if isinstance(encoder, str):
        name = encoder
        backbone = create_backbone(encoder, in_channels=in_channels, **backbone_kwargs)
    else:
        if backbone_kwargs:
            raise ValueError(f"backbone keyword arguments {sorted(backbone_kwargs)} need an "
                             "encoder given by name")
        backbone = encoder
        name = getattr(backbone, "name", type(backbone).__name__)
    if weights is not None:
        load_encoder_weights(backbone, weights)
    if normalize == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    elif normalize is None:
        mean = std = None
    elif isinstance(normalize, str):
        raise ValueError(f"normalize must be None, 'imagenet' or (mean, std), got {normalize!r}")
    else:
        mean, std = normalize
    size = len(vocab) if isinstance(vocab, Vocabulary) else int(vocab)
    specials = ({"pad_index": vocab.pad_index, "start_index": vocab.start_index,
                 "end_index": vocab.end_index} if isinstance(vocab, Vocabulary) else {})
    model = CaptionModel(backbone, size, embed_dim, hidden_dim, rnn, num_layers, dropout,
                         mean=mean, std=std, image_norm=image_norm, **specials)
    frozen = freeze_encoder(model.encoder, freeze)
    model.config = {
        "encoder": name, "vocab_size": size, "embed_dim": embed_dim, "hidden_dim": hidden_dim,
        "rnn": rnn, "num_layers": num_layers, "dropout": dropout, "in_channels": in_channels,
        "normalize": normalize if normalize is None or isinstance(normalize, str)
        else [list(map(float, mean)), list(map(float, std))],
        "freeze": freeze, "image_norm": bool(image_norm),
        **({"backbone_kwargs": backbone_kwargs} if backbone_kwargs else {}),
    }
    model.frozen = frozen
    return model
