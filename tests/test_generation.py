"""The no-repeat-n-gram rule by hand, and greedy decoding against transformers' generate."""

import numpy as np
import pytest

import reference

from paddle_got import GOTQwenForCausalLM
from paddle_got.generation import NoRepeatNGram, greedy_generate


def test_no_repeat_ngram_by_hand():
    assert NoRepeatNGram(2, [1, 2, 1]).banned() == {2}
    assert NoRepeatNGram(3, [1, 2, 3, 1, 2]).banned() == {3}
    assert NoRepeatNGram(3, [1, 2, 3, 1, 4]).banned() == set()
    rule = NoRepeatNGram(2, [5])
    assert rule.banned() == set()
    rule.push(5)  # the bigram (5, 5) now exists
    assert rule.banned() == {5}


@pytest.mark.parametrize("no_repeat_ngram_size", [0, 3, 20])
def test_batch_generation_equals_reference(no_repeat_ngram_size, ocr_checkpoint):
    """A left-padded batch (1 and 3 tiles) with per-row stopping gives the reference's tokens exactly."""
    shape = ocr_checkpoint.shape
    model = GOTQwenForCausalLM.from_pretrained(ocr_checkpoint.directory)
    first = reference.prompt_ids(1, shape, 9, 4, seed=21)
    second = reference.prompt_ids(3, shape, 2, 3, seed=22)
    ids, mask = reference.left_pad([first, second], pad_id=shape.vocab_size - 217)
    pixels = np.concatenate([reference.random_pixels(1, shape, 23), reference.random_pixels(3, shape, 24)])
    batch = {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}
    endoftext = shape.vocab_size - 217
    unstopped = reference.reference_generate(ocr_checkpoint.model, batch, 12, no_repeat_ngram_size, (endoftext,),
                                             endoftext)
    # A token row 0 really produces at step 8 ends sequences too, so that rows stop at different steps.
    eos = (unstopped[0][8], endoftext)
    ours = greedy_generate(model, ids, mask, pixels, eos, max_new_tokens=40, no_repeat_ngram_size=no_repeat_ngram_size)
    expected = reference.reference_generate(ocr_checkpoint.model, batch, 40, no_repeat_ngram_size, eos, endoftext)
    assert ours == expected
    assert len(ours[0]) <= 9 and ours[0][-1] == eos[0]
