"""Metrics against values computed by hand."""

import pytest

from paddle_got.metrics import score, set_precision_recall_f1, tokenize


def test_identical_strings():
    scores = score("the cat sat on the mat", "the cat sat on the mat")
    assert (scores.edit_distance, scores.f1, scores.precision, scores.recall, scores.bleu) == (0, 1, 1, 1, 1)
    assert (scores.acc, scores.norm_edit_dis) == (1, 1)
    # METEOR: F-mean 1 times (1 - 0.5 * (1 chunk / 6 matches) ** 3)
    assert scores.meteor == pytest.approx(1 - 0.5 / 6**3, abs=1e-4)


def test_known_bleu_value():
    # Clipped n-gram precisions 5/6, 3/5, 2/4, 1/3, equal lengths (no brevity penalty).
    expected = (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert score("the cat sat on the mat", "the cat sat on a mat").bleu == pytest.approx(expected, rel=1e-9)


def test_empty_prediction():
    scores = score("", "some text here")
    assert (scores.edit_distance, scores.f1, scores.precision, scores.recall) == (1, 0, 0, 0)
    assert (scores.bleu, scores.meteor, scores.acc, scores.norm_edit_dis) == (0, 0, 0, 0)


def test_empty_reference():
    scores = score("extra words", "")
    assert (scores.edit_distance, scores.precision, scores.recall, scores.f1, scores.acc) == (1, 0, 0, 0, 0)
    assert score("", "").edit_distance == 0 and score("", "").f1 == 1


def test_precision_and_recall_have_their_usual_meaning():
    precision, recall, f1 = set_precision_recall_f1(["a", "b", "c"], ["a", "b", "c", "d", "e"])
    assert (precision, recall) == (1.0, 0.6) and f1 == pytest.approx(2 * 0.6 / 1.6)


def test_chinese_is_segmented_into_words():
    assert tokenize("我爱北京天安门") == ["我", "爱", "北京", "天安门"]
    scores = score("我爱北京", "我爱北京天安门")
    assert (scores.precision, scores.recall) == (1.0, 0.75)
    assert scores.edit_distance == pytest.approx(3 / 7)


def test_character_level_and_paddleocr_space_handling():
    assert tokenize("ab c", level="char") == ["a", "b", "c"]
    scores = score("ab c", "abc", level="char")
    assert (scores.acc, scores.norm_edit_dis, scores.f1) == (1.0, 1.0, 1.0)
    assert scores.edit_distance == pytest.approx(1 / 4)
