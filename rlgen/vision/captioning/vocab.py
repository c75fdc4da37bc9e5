"""The caption vocabulary: a tokenizer, word <-> index tables with four special tokens, and
the padded batches the caption model trains on.

Tokenizer (:func:`tokenize`): lower case, then a token is either a run of letters, digits and
underscores (Unicode ``\\w``) or a single other non-space character, so punctuation is split
off as its own token: ``"A man's hat, red."`` -> ``a man ' s hat , red .``. With
``keep_punctuation=False`` the punctuation tokens are dropped (``a man s hat red``), closer to
what the COCO evaluation server scores (its PTB tokenizer removes punctuation, but splits
``man's`` as ``man 's``).

Indices: ``<pad>`` 0, ``<start>`` 1, ``<end>`` 2, ``<unk>`` 3, then the words kept by
:meth:`Vocabulary.build` (those seen at least ``min_count`` times in the training captions),
most frequent first, ties in alphabetical order, so the same captions always give the same
table. Words outside it encode as ``<unk>``. A checkpoint stores ``vocab.state_dict()`` (plain
lists and strings, loadable with ``torch.load(weights_only=True)``) and
``Vocabulary.from_state(...)`` rebuilds the same table.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import torch

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)
PAD_INDEX, START_INDEX, END_INDEX, UNK_INDEX = range(4)

_TOKEN = re.compile(r"\w+|[^\w\s]")
_WORD = re.compile(r"\w")
STATE_VERSION = 1


def tokenize(text: str, keep_punctuation: bool = True) -> list[str]:
    """Lower-cased words, punctuation split off as separate tokens (dropped when
    ``keep_punctuation=False``); see the module docstring."""
    if not isinstance(text, str):
        raise TypeError(f"tokenize takes a string, got {type(text).__name__}")
    tokens = _TOKEN.findall(text.lower())
    return tokens if keep_punctuation else [t for t in tokens if _WORD.match(t)]


class Vocabulary:
    """Word <-> index table: ``<pad> <start> <end> <unk>`` (0..3), then ``words``.

    ``vocab[word]`` / ``vocab.index(word)`` is the index (``<unk>``'s for an unknown word),
    ``vocab.tokens[i]`` the word, ``len(vocab)`` the size the model's output layer needs.
    """

    pad_index, start_index, end_index, unk_index = PAD_INDEX, START_INDEX, END_INDEX, UNK_INDEX

    def __init__(self, words: Iterable[str] = (), *, keep_punctuation: bool = True):
        self.keep_punctuation = bool(keep_punctuation)
        #: training-caption counts of the words (filled by ``build``; not saved)
        self.counts: dict[str, int] = {}
        self.tokens: list[str] = list(SPECIALS)
        self._index: dict[str, int] = {t: i for i, t in enumerate(SPECIALS)}
        for word in words:
            if not isinstance(word, str) or not word:
                raise ValueError(f"vocabulary words must be non-empty strings, got {word!r}")
            if word in self._index:
                raise ValueError(f"word {word!r} appears twice in the vocabulary (or is special)")
            self._index[word] = len(self.tokens)
            self.tokens.append(word)

    @classmethod
    def build(
        cls,
        captions: Iterable[str | Iterable[str]],
        min_count: int = 1,
        max_size: int | None = None,
        *,
        keep_punctuation: bool = True,
    ) -> Vocabulary:
        """The vocabulary of ``captions`` (caption strings, or per-image lists of them as a
        caption dataset's ``.captions``; tokenized with :func:`tokenize`): words seen at least
        ``min_count`` times, most frequent first (ties alphabetical), at most ``max_size`` of
        them (specials not counted)."""
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        counts: Counter = Counter()
        for caption in _flatten(captions):
            counts.update(t for t in tokenize(caption, keep_punctuation) if t not in SPECIALS)
        kept = sorted((w for w, c in counts.items() if c >= min_count),
                      key=lambda w: (-counts[w], w))
        if max_size is not None:
            kept = kept[:max_size]
        vocab = cls(kept, keep_punctuation=keep_punctuation)
        vocab.counts = {w: counts[w] for w in kept}
        return vocab

    # -- lookups -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, word: object) -> bool:
        return word in self._index

    def __getitem__(self, word: str) -> int:
        return self._index.get(word, UNK_INDEX)

    def index(self, word: str) -> int:
        return self._index.get(word, UNK_INDEX)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Vocabulary) and self.tokens == other.tokens
                and self.keep_punctuation == other.keep_punctuation)

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} tokens, keep_punctuation={self.keep_punctuation})"

    def tokenize(self, text: str) -> list[str]:
        return tokenize(text, self.keep_punctuation)

    # -- encode / decode -----------------------------------------------------------------------

    def encode(
        self,
        caption: str | Sequence[str],
        *,
        add_start: bool = True,
        add_end: bool = True,
        max_length: int | None = None,
    ) -> list[int]:
        """Indices of a caption (a string, tokenized here, or a token list):
        ``[<start>, w1, ..., wn, <end>]``. ``max_length`` caps the words (not the specials):
        a longer caption is cut and still ends with ``<end>``."""
        tokens = self.tokenize(caption) if isinstance(caption, str) else list(caption)
        if max_length is not None:
            tokens = tokens[:max_length]
        ids = [self.index(t) for t in tokens]
        return [START_INDEX] * add_start + ids + [END_INDEX] * add_end

    def decode(self, ids: Iterable[int] | torch.Tensor, *, join: bool = True,
               strip: bool = True) -> str | list[str]:
        """Words of ``ids``. ``strip``: stop at the first ``<end>`` and leave out ``<start>``
        and ``<pad>`` (``<unk>`` stays). ``join``: one string, words separated by spaces."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        words = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.tokens):
                raise IndexError(f"token index {i} is outside the vocabulary (0..{len(self) - 1})")
            if strip:
                if i == END_INDEX:
                    break
                if i in (START_INDEX, PAD_INDEX):
                    continue
            words.append(self.tokens[i])
        return " ".join(words) if join else words

    def encode_batch(
        self, captions: Sequence[str | Sequence[str]], max_length: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens, lengths)`` for the caption model: ``tokens`` int64 (B, T) holding
        ``<start> w1 .. wn <end>`` padded with ``<pad>``, ``lengths`` int64 (B,) = n + 2 (the
        unpadded length, specials included). ``max_length`` caps the words per caption."""
        encoded = [self.encode(c, max_length=max_length) for c in captions]
        lengths = torch.tensor([len(e) for e in encoded], dtype=torch.int64)
        tokens = torch.full((len(encoded), int(lengths.max()) if encoded else 0), PAD_INDEX,
                            dtype=torch.int64)
        for row, ids in enumerate(encoded):
            tokens[row, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
        return tokens, lengths

    # -- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Plain data to store in a checkpoint; :meth:`from_state` rebuilds the vocabulary."""
        return {"version": STATE_VERSION, "tokens": list(self.tokens),
                "keep_punctuation": self.keep_punctuation}

    @classmethod
    def from_state(cls, state: dict) -> Vocabulary:
        tokens = list(state.get("tokens", ())) if isinstance(state, dict) else []
        if tuple(tokens[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(
                "not a caption vocabulary state: expected a dict whose 'tokens' start with "
                f"{', '.join(SPECIALS)} (from Vocabulary.state_dict())"
            )
        return cls(tokens[len(SPECIALS):], keep_punctuation=state.get("keep_punctuation", True))


def _flatten(captions: Iterable) -> Iterable[str]:
    """Caption strings, from a flat list of them or from a list of per-image lists."""
    for item in captions:
        if isinstance(item, str):
            yield item
        elif isinstance(item, Iterable):
            for caption in item:
                if not isinstance(caption, str):
                    raise TypeError(
                        "Vocabulary.build takes caption strings, or per-image lists of them; "
                        f"got an item {caption!r}"
                    )
                yield caption
        else:
            raise TypeError(f"Vocabulary.build takes caption strings, got {item!r}")
