"""The synthetic-data renderer: deterministic per seed, every kind in the training format."""

import json
import os

import numpy as np

from paddle_got.data.annotations import load_meta
from paddle_got.data.synth import CHARACTERS, CHARS_PER_LINE, render_sample, write_dataset


def test_same_seed_same_data_other_seed_other_data(tmp_path):
    first = write_dataset(str(tmp_path / "a"), num_samples=4, seed=7)
    second = write_dataset(str(tmp_path / "b"), num_samples=4, seed=7)
    third = write_dataset(str(tmp_path / "c"), num_samples=4, seed=8)
    texts = [[r.turns[0][1] for r in load_meta(meta)] for meta in (first, second, third)]
    assert texts[0] == texts[1] != texts[2]
    image = json.load(open(os.path.join(tmp_path, "a", "annotations.json")))[0]["image"]
    with (
        open(os.path.join(tmp_path, "a", "images", image), "rb") as a,
        open(os.path.join(tmp_path, "b", "images", image), "rb") as b,
    ):
        assert a.read() == b.read()
    assert [r.turns[0][0] for r in load_meta(first)] == ["<image>\nOCR:"] * 4


def test_kinds():
    rng = np.random.default_rng(0)
    for _ in range(50):
        image, text = render_sample(rng, "chars")
        lines = text.split("\n")
        assert 1 <= len(lines) <= 2 and all(1 <= len(line) <= CHARS_PER_LINE for line in lines)
        assert set(text) - {"\n"} <= set(CHARACTERS) and image.size == (160, 160)
        _, paragraph = render_sample(rng, "paragraph")
        assert 2 <= len(paragraph.split("\n")) <= 4
        _, word = render_sample(rng, "word")
        assert 1 <= len(word.split(" ")) <= 2 and "\n" not in word
