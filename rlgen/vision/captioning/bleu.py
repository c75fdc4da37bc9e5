"""Corpus BLEU (Papineni, Roukos, Ward, Zhu, "BLEU: a Method for Automatic Evaluation of
Machine Translation", ACL 2002), following NLTK's ``nltk.translate.bleu_score.corpus_bleu``.

``corpus_bleu(references, hypotheses)`` gives the same number as NLTK's ``corpus_bleu`` on
the same token lists (checked to 1e-12 against NLTK 3.10.4 on 3,000 random corpora x 8 weight
sets x 5 smoothing settings, and in the tests). The convention, order by order ``n = 1 .. N``:

- Clipped counts: each n-gram of a hypothesis counts at most as often as it occurs in the one
  reference (of that image) holding it most often. The clipped counts and the hypothesis
  n-gram counts are summed over the whole corpus before dividing (micro-average: *corpus*
  BLEU, not the mean of sentence scores): ``p_n = sum(matches_n) / sum(total_n)``.
  As in NLTK, a hypothesis with fewer than ``n`` tokens (an empty one too) adds 1, not 0, to
  ``total_n``; the reference scripts (``multi-bleu.perl``, sacreBLEU) add 0.
- Brevity penalty from the corpus lengths: ``c`` is the sum of the hypothesis lengths, ``r``
  the sum, over hypotheses, of the reference length closest to the hypothesis's length
  (on a tie, the *shorter* reference). ``BP = 1`` if ``c > r``, ``0`` if ``c == 0``, else
  ``exp(1 - r / c)`` (so ``c == r`` gives 1).
- ``BLEU = BP * exp(sum_n w_n * log p_n)``, weights ``w_n = 1 / N`` unless given.
  BLEU-n (as in captioning papers' tables) is the cumulative score with ``N = n`` uniform
  weights; :func:`bleu_scores` computes BLEU-1..4 in one pass.
- No smoothing by default. Without smoothing, an order with no match at all (with a positive
  weight) makes the score 0, with a :class:`BLEUWarning` naming the order, as NLTK warns.
  (NLTK actually replaces such a precision by the smallest positive float and returns
  ``BP * exp(... + w_n * log(2.2e-308))``, e.g. 1e-77 at ``w_n = 0.25``: 0 to 1e-12, but not
  for tiny weights such as ``w_n = 0.01``, where NLTK's value is about 8e-4 times the rest
  and rlgen's is 0.) An order with weight 0 plays no part. No unigram match at all in the
  corpus gives 0, smoothed or not (as NLTK).
- ``smoothing``: the smoothing functions of Chen and Cherry, "A Systematic Comparison of
  Smoothing Techniques for Sentence-Level BLEU" (WMT 2014), under NLTK's
  ``SmoothingFunction`` method names, applied to the corpus counts as NLTK does:

  - ``"method0"``: none (the default, ``None``);
  - ``"method1"``: an order with 0 matches gets ``epsilon / total_n`` (``epsilon=0.1``);
  - ``"method2"``: orders ``n >= 2`` get ``(matches_n + 1) / (total_n + 1)`` (Lin and Och 2004),
    all of them, matched or not; unigrams are kept;
  - ``"method3"``: NIST geometric smoothing, the ``k``-th order with 0 matches (k = 1, 2, ...)
    gets ``1 / (2**k * total_n)``;
  - ``"method4"``: the ``k``-th order with 0 matches gets
    ``1 / (2**k * 5 / ln(c)) / total_n`` (``c`` the corpus hypothesis length; needs ``c > 1``,
    else that order is left out of the sum, as NLTK does).

  NLTK's methods 5-7 are not provided (NLTK computes them from the corpus's *last* sentence
  only).

How this differs from the COCO caption evaluation server (``pycocoevalcap``, coco-caption's
``bleu_scorer.py``, used for MS COCO results; same clipped counts, same closest reference
length with the shorter one on ties, same corpus sums):

- tokenisation: it lower-cases and tokenises references and hypotheses with the Stanford PTB
  tokenizer, then drops punctuation tokens (``.``, ``,``, ``'``, ``?``, ``!``, ``:``, ``;``,
  ``-``, ...). rlgen's :func:`~rlgen.vision.captioning.vocab.tokenize` keeps punctuation as
  tokens unless ``keep_punctuation=False``, and splits clitics differently (``man's``:
  ``man ' s`` here, ``man 's`` there). Tokenise both sides the same way before comparing.
- constants: each precision is ``(matches + 1e-15) / (total + 1e-9)`` and the length ratio
  ``(c + 1e-15) / (r + 1e-9)``, so matched scores differ by 1e-9 relative or less, and an order
  without any match gives a small positive score (e.g. 4-gram precision 1e-15 / total, whose
  fourth root is ~1e-5 for a 1,000-caption corpus) instead of 0; short corpora differ most.
- a hypothesis shorter than ``n`` adds 0 to ``total_n`` there (1 in NLTK and here).

sacreBLEU differs more: its 13a tokenizer, exponential smoothing by default and a 0-100
scale.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Hashable, Sequence

Tokens = Sequence[Hashable]

#: NLTK's SmoothingFunction methods this module implements (``None`` = "method0")
SMOOTHING_METHODS = ("method0", "method1", "method2", "method3", "method4")
#: method4's constant (NLTK's ``SmoothingFunction(k=5)``)
METHOD4_K = 5


class BLEUWarning(UserWarning):
    """An n-gram order without any match made an unsmoothed BLEU score 0."""


def ngram_counts(tokens: Tokens, n: int) -> Counter:
    """How often each n-gram (a tuple of ``n`` tokens) occurs in ``tokens``."""
    return Counter(zip(*(tokens[i:] for i in range(n))))


def closest_ref_length(references: Sequence[Tokens], hyp_len: int) -> int:
    """The length of the reference closest in length to the hypothesis; the shorter on ties."""
    return min((len(ref) for ref in references), key=lambda r: (abs(r - hyp_len), r))


def brevity_penalty(ref_len: int, hyp_len: int) -> float:
    """1 if ``hyp_len > ref_len``; 0 for an empty output; else ``exp(1 - ref_len / hyp_len)``."""
    if hyp_len > ref_len:
        return 1.0
    if hyp_len == 0:
        return 0.0
    return math.exp(1 - ref_len / hyp_len)


def _check_caption(caption, what: str) -> list:
    if isinstance(caption, str | bytes):
        raise TypeError(
            f"{what} is a string ({caption[:40]!r}); BLEU takes token lists: tokenize it first "
            "(e.g. rlgen.vision.captioning.tokenize(text))"
        )
    if hasattr(caption, "tolist"):  # a tensor or array of token ids
        caption = caption.tolist()
    return caption if isinstance(caption, Sequence) else list(caption)


def bleu_counts(
    references: Sequence[Sequence[Tokens]], hypotheses: Sequence[Tokens], max_n: int = 4
) -> dict:
    """The corpus statistics BLEU is computed from: ``matches`` and ``totals`` (lists, order
    1..``max_n``: clipped n-gram matches and hypothesis n-grams, each hypothesis adding at least
    1 to every total), ``hyp_len`` (c) and ``ref_len`` (r, closest lengths). Counts of several
    corpora add up (sum each field) to the counts of their union."""
    if isinstance(references, str) or isinstance(hypotheses, str):
        raise TypeError("references and hypotheses must be lists (of token lists), not strings")
    if len(references) != len(hypotheses):
        raise ValueError(
            f"{len(hypotheses)} hypotheses but {len(references)} reference lists; give one list "
            "of references per hypothesis"
        )
    if max_n < 1:
        raise ValueError(f"max_n must be >= 1, got {max_n}")
    matches, totals = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for i, (refs, hyp) in enumerate(zip(references, hypotheses)):
        hyp = _check_caption(hyp, f"hypothesis {i}")
        if isinstance(refs, str | bytes) or not len(refs):
            raise ValueError(
                f"hypothesis {i} has no references (got {refs!r}); give a list of token lists"
            )
        refs = [_check_caption(r, f"reference {j} of hypothesis {i}") for j, r in enumerate(refs)]
        for n in range(1, max_n + 1):
            counts = ngram_counts(hyp, n)
            if counts:
                best: dict = {}  # the most any one reference holds each hypothesis n-gram
                for ref in refs:
                    in_ref = ngram_counts(ref, n)
                    for gram in counts:
                        if in_ref[gram] > best.get(gram, 0):
                            best[gram] = in_ref[gram]
                matches[n - 1] += sum(min(c, best.get(g, 0)) for g, c in counts.items())
            # NLTK's convention: a hypothesis too short for order n still adds 1 here.
            totals[n - 1] += max(1, sum(counts.values()))
        hyp_len += len(hyp)
        ref_len += closest_ref_length(refs, len(hyp))
    return {"matches": matches, "totals": totals, "hyp_len": hyp_len, "ref_len": ref_len}


def _smoothed_precisions(
    matches: Sequence[int], totals: Sequence[int], hyp_len: int, smoothing: str, epsilon: float
) -> list[float | None]:
    """Precision per order after smoothing; None for an order that stays without a match."""
    out: list[float | None] = []
    k = 1  # methods 3 and 4: the k-th order without a match
    for i, (m, t) in enumerate(zip(matches, totals)):
        if smoothing == "method2" and i > 0:
            out.append((m + 1) / (t + 1))
        elif m > 0:
            out.append(m / t)
        elif smoothing == "method1":
            out.append((m + epsilon) / t)
        elif smoothing == "method3":
            out.append(1 / (2**k * t))
            k += 1
        elif smoothing == "method4" and hyp_len > 1:
            out.append(1 / (2**k * METHOD4_K / math.log(hyp_len)) / t)
            k += 1
        else:
            out.append(None)
    return out


def _weight_sets(weights, max_n: int) -> tuple[list[tuple[float, ...]], bool]:
    """(list of weight tuples, whether several were given)."""
    if weights is None:
        return [(1.0 / max_n,) * max_n], False
    try:  # NLTK's test: a list of weight tuples, or one tuple of numbers
        weights[0][0]
        several = True
    except (TypeError, IndexError):
        several = False
    sets = [tuple(float(w) for w in ws) for ws in (weights if several else [weights])]
    for ws in sets:
        if not ws or any(not math.isfinite(w) or w < 0 for w in ws):
            raise ValueError(f"BLEU weights must be non-empty and >= 0, got {ws}")
    return sets, several


def bleu_from_counts(
    counts: dict, weights=None, smoothing: str | None = None, *, epsilon: float = 0.1
) -> float | list[float]:
    """BLEU from :func:`bleu_counts`'s statistics (see the module docstring for the rules)."""
    matches, totals = counts["matches"], counts["totals"]
    sets, several = _weight_sets(weights, len(matches))
    orders = max(len(ws) for ws in sets)
    if orders > len(matches):
        raise ValueError(f"weights cover {orders} orders but the counts only {len(matches)}")
    smoothing = smoothing or "method0"
    if smoothing not in SMOOTHING_METHODS:
        raise ValueError(
            f"unknown smoothing {smoothing!r}; expected None or one of "
            f"{', '.join(SMOOTHING_METHODS)} (NLTK's SmoothingFunction method names)"
        )
    if not totals or totals[0] == 0:
        raise ValueError("BLEU of an empty corpus is undefined: give at least one hypothesis")
    if matches[0] == 0:  # no unigram in common: 0, smoothed or not (as NLTK)
        return [0.0] * len(sets) if several else 0.0
    precisions = _smoothed_precisions(matches[:orders], totals[:orders], counts["hyp_len"],
                                      smoothing, epsilon)
    bp = brevity_penalty(counts["ref_len"], counts["hyp_len"])
    scores = []
    for ws in sets:
        zero = [n + 1 for n, (w, p) in enumerate(zip(ws, precisions)) if w > 0 and p is None]
        if zero and smoothing == "method0":
            warnings.warn(
                f"BLEU is 0: the hypotheses have no {zero[0]}-gram in common with the references "
                "(use lower orders, or smoothing='method1')",
                BLEUWarning,
                stacklevel=3,
            )
            scores.append(0.0)
            continue
        # An order left unsmoothed by method4 (c <= 1) drops out of the sum, as in NLTK.
        logs = [w * math.log(p) for w, p in zip(ws, precisions) if p is not None]
        scores.append(bp * math.exp(math.fsum(logs)))
    return scores if several else scores[0]


def corpus_bleu(
    references: Sequence[Sequence[Tokens]],
    hypotheses: Sequence[Tokens],
    max_n: int = 4,
    weights: Sequence[float] | Sequence[Sequence[float]] | None = None,
    smoothing: str | None = None,
    *,
    epsilon: float = 0.1,
) -> float | list[float]:
    """Corpus BLEU of ``hypotheses`` (token lists, one per image) against ``references`` (for
    each image, a list of reference token lists), in [0, 1]; NLTK's ``corpus_bleu`` convention
    (see the module docstring).

    Tokens are any hashable values (words, or token ids with the special tokens removed);
    strings are refused, so that a caption is never silently split into characters.
    ``weights``: one weight per n-gram order 1..len(weights) (default ``1 / max_n`` each; their
    length sets the orders, and ``max_n``, if not left at 4, must agree), or a list of such
    tuples for several scores from one pass (a list is returned, as NLTK does).
    ``smoothing``: None (= ``"method0"``), ``"method1"`` (``epsilon``), ``"method2"``,
    ``"method3"`` or ``"method4"``, NLTK's ``SmoothingFunction`` methods.
    """
    if weights is not None:
        sets, _ = _weight_sets(weights, max_n)
        longest = max(len(ws) for ws in sets)
        if max_n not in (4, longest):
            raise ValueError(
                f"max_n={max_n} but the weights cover {longest} orders; give one weight per "
                "order (the weights' length sets the orders), or leave max_n out"
            )
        max_n = longest
    counts = bleu_counts(references, hypotheses, max_n)
    return bleu_from_counts(counts, weights, smoothing, epsilon=epsilon)


def bleu_scores(
    references: Sequence[Sequence[Tokens]],
    hypotheses: Sequence[Tokens],
    max_n: int = 4,
    smoothing: str | None = None,
    *,
    epsilon: float = 0.1,
) -> dict[str, float]:
    """``{"bleu1": ..., ..., "bleu{max_n}": ...}``: the cumulative BLEU-n (uniform weights
    ``1/n`` over orders 1..n) for every n, from one pass over the corpus, as captioning papers
    (and the COCO server's Bleu_1..Bleu_4) report them."""
    counts = bleu_counts(references, hypotheses, max_n)
    weights = [(1.0 / n,) * n for n in range(1, max_n + 1)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BLEUWarning)
        scores = bleu_from_counts(counts, weights, smoothing, epsilon=epsilon)
    if caught:  # one warning for the table, not one per column
        warnings.warn(str(caught[0].message), BLEUWarning, stacklevel=2)
    return {f"bleu{n}": s for n, s in zip(range(1, max_n + 1), scores)}
