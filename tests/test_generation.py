"""The per-sequence rules by hand: the no-repeat-n-gram ban and the repetition guard."""

import pytest

from paddle_got.generation import NoRepeatNGram, RepetitionGuard


def test_no_repeat_ngram_by_hand():
    assert NoRepeatNGram(2, [1, 2, 1]).banned() == {2}
    assert NoRepeatNGram(3, [1, 2, 3, 1, 2]).banned() == {3}
    assert NoRepeatNGram(3, [1, 2, 3, 1, 4]).banned() == set()
    rule = NoRepeatNGram(2, [5])
    assert rule.banned() == set()
    rule.push(5)  # the bigram (5, 5) now exists
    assert rule.banned() == {5}


def test_repetition_guard_stops_a_loop_and_keeps_the_block_once():
    guard = RepetitionGuard(max_period=4, min_repeated=6)
    text = [9, 8, 1, 2, 3, 1, 2, 3, 1, 2, 3]  # "9 8" then the block (1 2 3) and two copies: 6 repeated tokens
    assert [guard.push(token) for token in text] == [False] * 10 + [True]
    assert guard.keep == 5 and text[: guard.keep] == [9, 8, 1, 2, 3]


@pytest.mark.parametrize("tokens", [[5] * 5, [1, 2] * 3, [1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 5], list(range(40))])
def test_repetition_guard_lets_short_or_broken_repeats_through(tokens):
    guard = RepetitionGuard(max_period=4, min_repeated=6)
    assert not any(guard.push(token) for token in tokens)


def test_repetition_guard_needs_two_copies_of_long_blocks():
    guard = RepetitionGuard(max_period=8, min_repeated=4)
    block = [10, 11, 12, 13, 14, 15, 16]
    pushed = [guard.push(token) for token in block * 3]
    assert pushed.index(True) == 3 * len(block) - 1 and guard.keep == len(block)
