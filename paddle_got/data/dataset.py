"""Training data: meta file + JSON/JSONL annotations -> tokenised, masked samples (docs/design.md §7).

A meta file maps dataset names to `{"images": <dir>, "annotations": <json or jsonl>}` (optionally `"multi_crop":
true`); each annotation is `{"image": <file or list of files>, "conversations": [{"from": "human", "value":
"<image>\\nOCR:"}, {"from": "gpt", "value": <text>}, ...]}`. A list of images is read as the pages of one document.
Only the answers and their closing `<|im_end|>` are supervised.
"""

import os
from dataclasses import dataclass, field
from typing import List, Tuple

import numpy as np
import paddle
from PIL import Image

from ..constants import IGNORE_INDEX, IM_END, USER_TURN
from ..errors import BadInputError, DataError
from ..inputs import load_image
from ..logger import logger
from ..processing import GOTProcessor, OCRRequest, build_prompt, multi_crop_tile_count
from .annotations import Record

LISTED_FILES = 5


@dataclass
class DataStats:
    """What was skipped or cut while reading the data; logged once before training."""

    samples: int = 0
    missing_images: List[str] = field(default_factory=list)
    truncated: int = 0
    too_long: int = 0
    unreadable: int = 0


def conversation_tokens(processor: GOTProcessor, turns: List[Tuple[str, str]], num_image_tokens: int):
    """`(input_ids, labels, prompt_length)` of a conversation; labels are IGNORE_INDEX outside the answers.

    The first turn uses the full template (system message and image block); later turns append
    `<|im_start|>user\\n...<|im_end|><|im_start|>assistant\\n`. Each answer is followed by `<|im_end|>`.
    `prompt_length` is the length of the first prompt (it holds the image block and is never truncated).
    """
    tokenizer = processor.tokenizer
    im_end = tokenizer.token_id(IM_END)
    input_ids: List[int] = []
    labels: List[int] = []
    prompt_length = 0
    for index, (question, answer) in enumerate(turns):
        if index == 0:
            prompt = build_prompt(question, num_image_tokens, processor.prompt.system_message)
        else:
            prompt = USER_TURN.format(user=question)
        prompt_ids = tokenizer.encode(prompt)
        answer_ids = tokenizer.encode(answer) + [im_end]
        input_ids += prompt_ids + answer_ids
        labels += [IGNORE_INDEX] * len(prompt_ids) + answer_ids
        if index == 0:
            prompt_length = len(prompt_ids)
    return input_ids, labels, prompt_length


class GOTDataset(paddle.io.Dataset):
    """Records -> `{"input_ids", "labels", "pixel_values"}` (int64 lists, float32 `[T, 3, S, S]`).

    Everything that can be decided before training is decided up front and counted in `stats`: records whose
    images are missing are dropped and named (`strict` makes that fatal); sequences longer than `max_length` lose
    the end of their answers, never the prompt with its image tokens; records whose prompt alone is too long are
    dropped. Every kept sample therefore supervises at least one token.
    """

    def __init__(self, records: List[Record], processor: GOTProcessor, max_length: int = 8192, strict: bool = False):
        self.processor = processor
        self.max_length = max_length
        self.stats = DataStats()
        missing = sorted({path for r in records for path in r.images if not os.path.isfile(path)})
        if missing:
            listed = ", ".join(missing[:LISTED_FILES])
            if len(missing) > LISTED_FILES:
                listed += f" and {len(missing) - LISTED_FILES} more"
            count = f"{len(missing)} image files are" if len(missing) > 1 else "1 image file is"
            if strict:
                raise DataError(f"{count} missing: {listed}.")
            logger.warning(f"{count} missing, their samples are skipped: {listed}.")
        self.stats.missing_images = missing
        missing_set = set(missing)
        self.records = [r for r in records if not missing_set.intersection(r.images) and self._fits(r)]
        self.stats.samples = len(self.records)
        if not self.records:
            raise DataError("No usable training sample: every one was missing, unreadable or too long.")

    def _num_tiles(self, record: Record) -> int:
        """Tiles a record's images become, from the image headers only (no decoding)."""
        if not record.multi_crop or len(record.images) > 1:
            return len(record.images)
        with Image.open(record.images[0]) as image:
            return multi_crop_tile_count(image.width, image.height, self.processor.image_size)

    def _tokens(self, record: Record, num_tiles: int):
        """`(input_ids, labels, untruncated length)`, cut to `max_length`; None if the prompt alone does not fit."""
        input_ids, labels, prompt_length = conversation_tokens(
            self.processor, record.turns, self.processor.tokens_per_tile * num_tiles
        )
        if prompt_length >= self.max_length:
            return None
        return input_ids[: self.max_length], labels[: self.max_length], len(input_ids)

    def _fits(self, record: Record) -> bool:
        """Whether a record can be trained on; counts unreadable, too long and truncated records."""
        try:
            num_tiles = self._num_tiles(record)
        except OSError:
            self.stats.unreadable += 1
            return False
        tokens = self._tokens(record, num_tiles)
        if tokens is None:
            self.stats.too_long += 1
            return False
        if tokens[2] > self.max_length:
            self.stats.truncated += 1
        return True

    def __len__(self) -> int:
        return len(self.records)

    def encode(self, record: Record) -> dict:
        """The training example of a record (BadInputError if an image cannot be decoded)."""
        pages = [load_image(path) for path in record.images]
        request = OCRRequest(pages, multi_crop=record.multi_crop, multi_page=len(pages) > 1)
        pixel_values = self.processor.tiles(request)
        input_ids, labels, _ = self._tokens(record, len(pixel_values))
        return {"input_ids": input_ids, "labels": labels, "pixel_values": pixel_values}

    def __getitem__(self, index: int) -> dict:
        """The example at `index`; an image that fails to decode is logged and the next record used instead."""
        for offset in range(len(self.records)):
            record = self.records[(index + offset) % len(self.records)]
            try:
                return self.encode(record)
            except BadInputError as err:
                logger.warning(f"Skipping {record.source}: {err}")
        raise DataError("No training sample can be used: no image could be decoded.")


def collate_right_padded(examples: List[dict], pad_token_id: int) -> dict:
    """Right-padded batch: `input_ids`, `labels` (IGNORE_INDEX on padding), `attention_mask` int64 `[B, L]`,
    `pixel_values` float32 `[sum T, 3, S, S]`, as paddle tensors."""
    length = max(len(e["input_ids"]) for e in examples)
    input_ids = np.full((len(examples), length), pad_token_id, dtype=np.int64)
    labels = np.full((len(examples), length), IGNORE_INDEX, dtype=np.int64)
    attention_mask = np.zeros((len(examples), length), dtype=np.int64)
    for row, example in enumerate(examples):
        size = len(example["input_ids"])
        input_ids[row, :size] = example["input_ids"]
        labels[row, :size] = example["labels"]
        attention_mask[row, :size] = 1
    return {
        "input_ids": paddle.to_tensor(input_ids),
        "labels": paddle.to_tensor(labels),
        "attention_mask": paddle.to_tensor(attention_mask),
        "pixel_values": paddle.to_tensor(np.concatenate([e["pixel_values"] for e in examples])),
    }


def log_stats(stats: DataStats) -> None:
    """One log line with what the data held and what was skipped."""
    logger.info(
        f"Training data: {stats.samples} samples; {len(stats.missing_images)} missing images skipped, "
        f"{stats.unreadable} unreadable, {stats.too_long} prompts longer than max_length skipped, "
        f"{stats.truncated} answers truncated to max_length."
    )
