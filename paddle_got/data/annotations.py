"""Annotations without Paddle: meta files and JSON / JSONL annotation files -> `Record`s, with a one-sentence
`DataError` for anything malformed. Training (`dataset.py`) and evaluation (`evaluation.py`) read data through it.
"""

import itertools
import json
import os
from dataclasses import dataclass
from typing import Iterator, List, Tuple

from ..constants import IMAGE_PLACEHOLDER
from ..errors import DataError


@dataclass
class Record:
    """One annotated sample: image paths (absolute), alternating (human, gpt) turns, and where it came from."""

    images: List[str]
    turns: List[Tuple[str, str]]
    source: str
    multi_crop: bool = False


def _json_array_records(text: str, path: str) -> Iterator[Tuple[object, str]]:
    """Yield `(record, "line L (sample N)")` for each element of a JSON array held in `text`."""
    decoder = json.JSONDecoder()
    position = text.index("[") + 1
    for number in itertools.count(1):
        while position < len(text) and text[position] in " \t\r\n,":
            position += 1
        if position >= len(text) or text[position] == "]":
            return
        line = text.count("\n", 0, position) + 1
        try:
            record, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as err:
            raise DataError(f"{path} line {err.lineno}: malformed JSON ({err.msg}).") from err
        yield record, f"line {line} (sample {number})"


def read_annotations(path: str) -> Iterator[Tuple[object, str]]:
    """Yield `(record, where in the file)` from a JSON array file ("line L (sample N)") or a JSONL file ("line N");
    DataError on malformed JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        raise DataError(f"Cannot read the annotation file {path}: {err.strerror}.") from err
    if text.lstrip().startswith("["):
        yield from _json_array_records(text, path)
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield json.loads(line), f"line {number}"
        except json.JSONDecodeError as err:
            raise DataError(f"{path} line {number}: malformed JSON ({err.msg}).") from err


def parse_record(raw, image_dir: str, where: str, multi_crop: bool) -> Record:
    """Check one annotation's structure; DataError naming `where` (file and line) when it is malformed."""
    if not isinstance(raw, dict):
        raise DataError(f"{where}: an annotation must be a JSON object.")
    images = raw.get("image")
    images = [images] if isinstance(images, str) else images
    if not images or not isinstance(images, list) or not all(isinstance(i, str) and i for i in images):
        raise DataError(f'{where}: "image" must be a file name or a non-empty list of file names.')
    conversations = raw.get("conversations")
    if not isinstance(conversations, list) or not conversations or len(conversations) % 2:
        raise DataError(f'{where}: "conversations" must be a list of human/gpt turn pairs.')
    turns = []
    for index in range(0, len(conversations), 2):
        human, gpt = conversations[index], conversations[index + 1]
        if not (isinstance(human, dict) and isinstance(gpt, dict)) or (human.get("from"), gpt.get("from")) != (
            "human",
            "gpt",
        ):
            raise DataError(f'{where}: turns must alternate {{"from": "human"}} and {{"from": "gpt"}}.')
        if not isinstance(human.get("value"), str) or not isinstance(gpt.get("value"), str):
            raise DataError(f'{where}: every turn needs a string "value".')
        turns.append((human["value"], gpt["value"]))
    if IMAGE_PLACEHOLDER not in turns[0][0]:
        raise DataError(f"{where}: the first human turn must contain {IMAGE_PLACEHOLDER}.")
    return Record([os.path.join(image_dir, i) for i in images], turns, where, multi_crop)


def load_meta(meta_path: str) -> List[Record]:
    """All records of every dataset of a meta file, checked; relative paths resolve against the meta file."""
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except OSError as err:
        raise DataError(f"Cannot read the meta file {meta_path}: {err.strerror}.") from err
    except json.JSONDecodeError as err:
        raise DataError(f"{meta_path} line {err.lineno}: malformed JSON ({err.msg}).") from err
    if not isinstance(meta, dict) or not meta:
        raise DataError(f'{meta_path} must map dataset names to {{"images": ..., "annotations": ...}}.')
    base = os.path.dirname(os.path.abspath(meta_path))
    records = []
    for name, entry in meta.items():
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("images"), str)
            or not isinstance(entry.get("annotations"), str)
        ):
            raise DataError(f'{meta_path}: dataset {name!r} needs "images" and "annotations" paths.')
        image_dir = os.path.join(base, entry["images"])
        annotations = os.path.join(base, entry["annotations"])
        for raw, where in read_annotations(annotations):
            records.append(parse_record(raw, image_dir, f"{annotations} {where}", bool(entry.get("multi_crop"))))
    return records
