"""Image captioning: NIC (Vinyals et al. 2015) on any registered backbone, its vocabulary and
corpus BLEU.

- ``bleu.py``: :func:`corpus_bleu` / :func:`bleu_scores` (NLTK's ``corpus_bleu`` convention:
  clipped counts, closest reference length with the shorter one on ties, no smoothing unless
  asked; NLTK's smoothing methods 1-4);
- ``vocab.py``: :func:`tokenize` and :class:`Vocabulary` (``<pad> <start> <end> <unk>``,
  ``encode`` / ``decode`` / ``encode_batch``, ``state_dict`` / ``from_state``);
- ``model.py``: :class:`CaptionModel` (CNN encoder, LSTM / GRU decoder, teacher forcing on
  packed sequences, greedy and batched beam search), :func:`caption_loss`,
  :func:`build_caption_model`.

    from rlgen.vision.captioning import Vocabulary, build_caption_model, caption_loss
    vocab = Vocabulary.build(train_set.captions, min_count=5)
    model = build_caption_model("resnet50", vocab, weights="torchvision:resnet50",
                                normalize="imagenet", freeze="backbone")
    tokens, lengths = vocab.encode_batch(captions)
    loss = caption_loss(model(images, tokens, lengths), tokens, lengths)
    found = model.eval().beam_search(images, beam_size=3)  # [[(ids, log_prob), ...], ...]
    text = vocab.decode(found[0][0][0])
"""

from rlgen.vision.captioning.bleu import (
    BLEUWarning,
    bleu_counts,
    bleu_from_counts,
    bleu_scores,
    brevity_penalty,
    closest_ref_length,
    corpus_bleu,
)
from rlgen.vision.captioning.vocab import SPECIALS, Vocabulary, tokenize

_MODEL_NAMES = (
    "CaptionEncoder",
    "CaptionModel",
    "beam_search_decode",
    "build_caption_model",
    "caption_loss",
    "freeze_encoder",
    "greedy_decode",
    "load_encoder_weights",
    "sequence_log_probs",
    "target_mask",
    "trim_captions",
)

__all__ = [
    "BLEUWarning",
    "SPECIALS",
    "Vocabulary",
    "bleu_counts",
    "bleu_from_counts",
    "bleu_scores",
    "brevity_penalty",
    "closest_ref_length",
    "corpus_bleu",
    "tokenize",
    *_MODEL_NAMES,
]


def __getattr__(name: str):
    # The model (and with it the backbone registry) loads on first use, so BLEU and the
    # vocabulary import light, as rlgen.vision.segmentation does for its models.
    if name in _MODEL_NAMES:
        from rlgen.vision.captioning import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
