"""Corpus BLEU: hand-computed cases and equality with NLTK's corpus_bleu."""

from __future__ import annotations

import math
import random
import warnings

import pytest
import torch

from rlgen.vision.captioning import (
    BLEUWarning,
    bleu_counts,
    bleu_scores,
    brevity_penalty,
    closest_ref_length,
    corpus_bleu,
)


def words(text: str) -> list[str]:
    return text.split()


def test_perfect_match_is_one_and_no_overlap_is_zero():
    refs = [[words("a man rides a red horse"), words("someone on a horse")]]
    assert corpus_bleu(refs, [words("a man rides a red horse")]) == 1.0
    assert bleu_scores(refs, [words("a man rides a red horse")]) == {
        "bleu1": 1.0, "bleu2": 1.0, "bleu3": 1.0, "bleu4": 1.0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no unigram in common: 0 without a warning (as NLTK)
        assert corpus_bleu(refs, [words("the dog sleeps")]) == 0.0
        assert corpus_bleu(refs, [words("the dog sleeps")], smoothing="method1") == 0.0


def test_clipped_unigram_precision_from_the_paper():
    # Papineni et al. 2002, section 2.1: "the" x7 against two references scores 2/7.
    hyp = words("the the the the the the the")
    refs = [words("the cat is on the mat"), words("there is a cat on the mat")]
    assert corpus_bleu([refs], [hyp], weights=(1.0,)) == pytest.approx(2 / 7, abs=1e-15)


def test_hand_computed_orders_several_references_and_smoothing():
    hyp = words("the cat sat on the mat")
    refs = [words("the cat is on the mat"), words("a cat sat on a mat")]
    # 1-grams: the x2 (ref 1 has two), cat, sat, on, mat: 6/6.
    # 2-grams: the cat, cat sat, sat on, on the, the mat: 5/5 (each in one reference).
    # 3-grams: cat sat on (ref 2), on the mat (ref 1) of 4: 2/4. 4-grams: 0/3.
    # Lengths 6, 6, 6: brevity penalty 1.
    assert bleu_counts([refs], [hyp]) == {"matches": [6, 5, 2, 0], "totals": [6, 5, 4, 3],
                                          "hyp_len": 6, "ref_len": 6}
    assert corpus_bleu([refs], [hyp], max_n=2) == 1.0
    assert corpus_bleu([refs], [hyp], max_n=3) == pytest.approx(0.5 ** (1 / 3), abs=1e-15)
    with pytest.warns(BLEUWarning, match="4-gram"):
        assert corpus_bleu([refs], [hyp]) == 0.0  # no 4-gram match, no smoothing
    # method1: the empty order gets epsilon / total = 0.1 / 3.
    expected = (1 * 1 * 0.5 * (0.1 / 3)) ** 0.25
    assert corpus_bleu([refs], [hyp], smoothing="method1") == pytest.approx(expected, abs=1e-15)
    # method2: (m + 1) / (t + 1) for orders >= 2: 1, 6/6, 3/5, 1/4.
    expected = (1 * 1 * 0.6 * 0.25) ** 0.25
    assert corpus_bleu([refs], [hyp], smoothing="method2") == pytest.approx(expected, abs=1e-15)
    # method3: the first order without a match gets 1 / (2 * total) = 1/6.
    expected = (0.5 * (1 / 6)) ** 0.25
    assert corpus_bleu([refs], [hyp], smoothing="method3") == pytest.approx(expected, abs=1e-15)


def test_clipping_takes_the_most_any_single_reference_holds():
    refs = [words("the cat"), words("the the dog")]
    assert corpus_bleu([refs], [words("the the cat")], weights=(1.0,)) == 1.0
    # Three "the" but no reference holds more than two: 2/3 (+ cat) -> 3/4.
    assert corpus_bleu([refs], [words("the the the cat")], weights=(1.0,)) == 0.75


def test_brevity_penalty_and_closest_reference_length():
    # Hypothesis of 2 words, reference of 6: BP = exp(1 - 6/2).
    score = corpus_bleu([[words("the cat sat on the mat")]], [words("the cat")], max_n=2)
    assert score == pytest.approx(math.exp(-2), abs=1e-15)
    # Ties go to the shorter reference: length 5 between 4 and 6 -> r = 4, so no penalty.
    assert closest_ref_length([[1] * 4, [1] * 6], 5) == 4
    assert closest_ref_length([[1] * 6, [1] * 4], 5) == 4
    assert closest_ref_length([[1] * 3, [1] * 8], 7) == 8
    refs = [words("a b c d"), words("a b c d e f")]
    assert corpus_bleu([refs], [words("a b c d e")], max_n=2) == 1.0  # longer r: 0.8187
    assert brevity_penalty(4, 5) == 1.0 and brevity_penalty(5, 5) == 1.0
    assert brevity_penalty(6, 5) == pytest.approx(math.exp(1 - 6 / 5), abs=1e-15)
    assert brevity_penalty(3, 0) == 0.0
    # Corpus level: lengths are summed before the penalty (c = 2 + 4, r = 4 + 4).
    refs2 = [[words("w x y z")], [words("a b c d")]]
    score = corpus_bleu(refs2, [words("w x"), words("a b c d")], weights=(1.0,))
    assert score == pytest.approx(math.exp(1 - 8 / 6), abs=1e-15)


def test_empty_and_short_hypotheses_follow_nltk():
    # An empty hypothesis adds nothing to c and matches, but 1 to every order's total, and
    # the shortest reference to r (NLTK's convention).
    refs = [[words("a b")], [words("c d e")]]
    counts = bleu_counts(refs, [words("a b"), []], max_n=2)
    assert counts == {"matches": [2, 1], "totals": [3, 2], "hyp_len": 2, "ref_len": 5}
    expected = math.exp(1 - 5 / 2) * math.sqrt(2 / 3 * 1 / 2)
    assert corpus_bleu(refs, [words("a b"), []], max_n=2) == pytest.approx(expected, abs=1e-15)
    assert corpus_bleu(refs, [[], []]) == 0.0
    # A one-word hypothesis still adds 1 to the 2-gram total.
    assert bleu_counts([[words("a b")]], [["a"]], max_n=2)["totals"] == [1, 1]


def test_several_scores_in_one_pass_and_token_ids():
    refs = [[words("a man rides a horse"), words("a person on a horse")],
            [words("two dogs play in the snow")]]
    hyps = [words("a man rides a brown horse"), words("dogs play in the snow")]
    table = bleu_scores(refs, hyps)
    for n in range(1, 5):
        assert table[f"bleu{n}"] == corpus_bleu(refs, hyps, max_n=n)
    several = corpus_bleu(refs, hyps, weights=[(1.0,), (0.5, 0.5)])
    assert several == [table["bleu1"], table["bleu2"]]
    # Token ids (lists or tensors) work as well as words.
    ids = {w: i for i, w in enumerate(sorted({w for r in refs for s in r for w in s} |
                                            {w for h in hyps for w in h}))}
    id_refs = [[torch.tensor([ids[w] for w in s]) for s in r] for r in refs]
    id_hyps = [[ids[w] for w in h] for h in hyps]
    assert corpus_bleu(id_refs, id_hyps) == corpus_bleu(refs, hyps)


def test_bad_inputs_say_what_is_expected():
    with pytest.raises(TypeError, match="token lists"):
        corpus_bleu([["a man"]], ["a man"])
    with pytest.raises(ValueError, match="one list of references per hypothesis"):
        corpus_bleu([[["a"]]], [["a"], ["b"]])
    with pytest.raises(ValueError, match="no references"):
        corpus_bleu([[]], [["a"]])
    with pytest.raises(ValueError, match="smoothing"):
        corpus_bleu([[["a"]]], [["a"]], smoothing="method7")
    with pytest.raises(ValueError, match="max_n=2 but the weights cover 3"):
        corpus_bleu([[["a"]]], [["a"]], max_n=2, weights=(0.2, 0.3, 0.5))
    with pytest.raises(ValueError, match="empty corpus"):
        corpus_bleu([], [])


# -- NLTK --------------------------------------------------------------------------------------

#: BLEU-1..4 as papers report them, and a few others
WEIGHTS = [(1.0,), (0.5, 0.5), (1 / 3,) * 3, (0.25,) * 4, (0.1, 0.3, 0.5, 0.1), (0.0, 1.0),
           (0.2,) * 5]
SMOOTHING = [None, "method1", "method2", "method3", "method4"]


def random_corpus(rng: random.Random) -> tuple[list, list]:
    vocab = [f"w{i}" for i in range(rng.randint(2, 7))]  # small: many (partial) matches

    def sentence(low: int, high: int) -> list[str]:
        return [rng.choice(vocab) for _ in range(rng.randint(low, high))]

    size = rng.randint(1, 5)
    hyps = [sentence(0, 3) if rng.random() < 0.4 else sentence(0, 12) for _ in range(size)]
    refs = [[sentence(1, 12) for _ in range(rng.randint(1, 5))] for _ in range(size)]
    return refs, hyps


def test_equals_nltk_corpus_bleu_on_random_corpora():
    from nltk.translate.bleu_score import SmoothingFunction
    from nltk.translate.bleu_score import corpus_bleu as nltk_corpus_bleu

    chen_cherry = SmoothingFunction()
    rng = random.Random(1234)
    compared = zero_orders = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # both warn of orders without a match
        for _ in range(100):
            refs, hyps = random_corpus(rng)
            for weights in WEIGHTS:
                for smoothing in SMOOTHING:
                    function = getattr(chen_cherry, smoothing) if smoothing else None
                    expected = nltk_corpus_bleu(refs, hyps, weights=weights,
                                                smoothing_function=function)
                    got = corpus_bleu(refs, hyps, weights=weights, smoothing=smoothing)
                    assert got == pytest.approx(expected, rel=0, abs=1e-12), (
                        refs, hyps, weights, smoothing)
                    # NLTK's "0" for an order without a match is a tiny positive number.
                    zero_orders += got == 0 and expected != 0
                    compared += 1
    assert compared == 100 * len(WEIGHTS) * len(SMOOTHING)
    assert zero_orders > 30  # the zero-match rule was exercised


def test_equals_nltk_on_its_documented_example():
    from nltk.translate.bleu_score import corpus_bleu as nltk_corpus_bleu

    hyp1 = words("It is a guide to action which ensures that the military always obeys the "
                 "commands of the party")
    ref1 = [words("It is a guide to action that ensures that the military will forever heed "
                  "Party commands"),
            words("It is the guiding principle which guarantees the military forces always "
                  "being under the command of the Party"),
            words("It is the practical guide for the army always to heed the directions of "
                  "the party")]
    hyp2 = words("he read the book because he was interested in world history")
    ref2 = [words("he was interested in world history because he read the book")]
    refs, hyps = [ref1, ref2], [hyp1, hyp2]
    assert corpus_bleu(refs, hyps) == pytest.approx(nltk_corpus_bleu(refs, hyps), abs=1e-15)
    assert corpus_bleu(refs, hyps) == pytest.approx(0.5920, abs=1e-4)  # NLTK's docstring
    weights = [(0.5, 0.5), (0.333, 0.333, 0.334), (0.25,) * 4, (0.2,) * 5]
    assert corpus_bleu(refs, hyps, weights=weights) == pytest.approx(
        nltk_corpus_bleu(refs, hyps, weights=weights), abs=1e-15)
