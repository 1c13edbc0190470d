"""ANLS and BLEU-4 evaluators of llava.eval.m4c_evaluator, and eval_science_qa.convert_caps, on hand-computed cases."""

from __future__ import annotations

import math

import pytest

from llava.eval.eval_science_qa import convert_caps
from llava.eval.m4c_evaluator import STVQAANLSEvaluator, TextCapsBleu4Evaluator, edit_distance


@pytest.mark.parametrize(("a", "b", "d"), [("", "", 0), ("abc", "", 3), ("kitten", "sitting", 3),
                                           ("flaw", "lawn", 2), ("same", "same", 0)])
def test_edit_distance(a, b, d):
    assert edit_distance(a, b) == d == edit_distance(b, a)


def test_anls_single_pairs():
    ev = STVQAANLSEvaluator()
    assert ev.get_anls("Hello ", "hello") == 1.0  # lower-cased and stripped
    assert ev.get_anls("hello", "hallo") == pytest.approx(0.8)  # 1 - 1/5
    assert ev.get_anls("ab", "ac") == pytest.approx(0.5)  # exactly at the threshold: kept
    assert ev.get_anls("abc", "axy") == 0.0  # 1 - 2/3 < 0.5
    assert ev.get_anls("", "") == 1.0


def test_anls_eval_pred_list():
    ev = STVQAANLSEvaluator()
    preds = [
        {"pred_answer": "hallo", "gt_answers": ["xyz", "hello"]},  # best gt: 0.8
        {"pred_answer": "STOP", "gt_answers": ["stop"]},  # 1.0
        {"pred_answer": "abc", "gt_answers": ["axy"]},  # 0.0
    ]
    assert ev.eval_pred_list(preds) == pytest.approx((0.8 + 1.0 + 0.0) / 3)
    assert ev.eval_pred_list([]) == 0.0


def test_bleu4_identical_is_one():
    ev = TextCapsBleu4Evaluator()
    preds = [{"pred_answer": "A cat sat on the mat.", "gt_answers": ["a cat sat on the mat", "a dog"]}]
    assert ev.eval_pred_list(preds) == pytest.approx(1.0)


def test_bleu4_precisions_and_brevity_penalty():
    ev = TextCapsBleu4Evaluator()
    # hyp a b c d e (5) vs ref a b c d f g (6): clipped matches 4/5, 3/4, 2/3, 1/2; BP exp(1 - 6/5).
    preds = [{"pred_answer": "A, b. c d e!", "gt_answers": ["a b c d f g"]}]
    expected = (4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25 * math.exp(1 - 6 / 5)
    assert ev.eval_pred_list(preds) == pytest.approx(expected, rel=1e-9)
    # a 4-token reference is as close (distance 1) and shorter: the reference length becomes 4 -> no penalty.
    preds = [{"pred_answer": "a b c d e", "gt_answers": ["a b c d f g", "x y z w"]}]
    assert ev.eval_pred_list(preds) == pytest.approx(0.2 ** 0.25, rel=1e-9)


def test_bleu4_is_corpus_level_and_clips():
    ev = TextCapsBleu4Evaluator()
    preds = [
        {"pred_answer": "a b c d", "gt_answers": ["a b c d"]},  # 4/4 3/3 2/2 1/1
        {"pred_answer": "the the the the the", "gt_answers": ["the cat is on the mat"]},
        # "the" clipped to 2 of 5; "the the" 0/4, 0/3 ... ; closest reference length 6 (hyp 5)
    ]
    # corpus sums: 1-gram 6/9, 2-gram 3/7, 3-gram 2/5, 4-gram 1/3; lengths c = 9, r = 10.
    expected = (6 / 9 * 3 / 7 * 2 / 5 * 1 / 3) ** 0.25 * math.exp(1 - 10 / 9)
    assert ev.eval_pred_list(preds) == pytest.approx(expected, rel=1e-6)


def test_bleu4_no_four_gram_match_is_about_zero():
    ev = TextCapsBleu4Evaluator()
    assert ev.eval_pred_list([{"pred_answer": "a cat", "gt_answers": ["a cat sat down"]}]) < 1e-3
    assert ev.eval_pred_list([]) == 0.0


def test_convert_caps():
    results = [{"question_id": "42", "text": "a red bus", "prompt": "describe"},
               {"question_id": 7, "text": "two dogs"}]
    assert convert_caps(results) == [{"image_id": 42, "caption": "a red bus"}, {"image_id": 7, "caption": "two dogs"}]
    assert convert_caps([]) == []
