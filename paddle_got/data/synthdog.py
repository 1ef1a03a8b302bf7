"""Convert the original SynthDoG-EN release (Donut's parquet shards) into the training format.

Each row holds `image` (a struct with the encoded `bytes`) and `ground_truth`, a JSON string whose
`gt_parse.text_sequence` is the text. Rows that cannot be read are skipped and counted.
"""

import glob
import io
import json
import os
from typing import List, Tuple

import pyarrow.parquet as pq
from PIL import Image
from tqdm import tqdm

from ..errors import GOTError
from ..logger import logger
from .synth import SYNTHDOG_QUESTION, write_json


def row_text(ground_truth: str) -> str:
    """The text of a SynthDoG row's `ground_truth` JSON; ValueError/KeyError when it has none."""
    return json.loads(ground_truth)["gt_parse"]["text_sequence"]


def parquet_files(source: str) -> List[str]:
    """The parquet shards of `source` (a file, or a directory searched recursively), sorted."""
    if os.path.isfile(source):
        return [source]
    files = sorted(glob.glob(os.path.join(source, "**", "*.parquet"), recursive=True))
    if not files:
        raise GOTError(f"No parquet files in {source}.")
    return files


def convert_synthdog(source: str, output: str, name: str = "synthdog_en") -> Tuple[str, int, int]:
    """Write `output/images/`, `output/<name>.json` and `output/meta.json`; returns `(meta path, kept, skipped)`."""
    images_dir = os.path.join(output, "images")
    os.makedirs(images_dir, exist_ok=True)
    annotations, skipped = [], 0
    for file in parquet_files(source):
        stem = os.path.splitext(os.path.basename(file))[0]
        table = pq.read_table(file, columns=["image", "ground_truth"])
        for index, (image, ground_truth) in enumerate(
            tqdm(
                zip(table.column("image").to_pylist(), table.column("ground_truth").to_pylist()),
                total=table.num_rows,
                desc=stem,
                unit="row",
            )
        ):
            try:
                text = row_text(ground_truth)
                with Image.open(io.BytesIO(image["bytes"])) as decoded:
                    extension = (decoded.format or "PNG").lower().replace("jpeg", "jpg")
                    decoded.verify()
            except (TypeError, KeyError, ValueError, OSError) as err:
                logger.warning(f"Skipping {file} row {index}: {err}")
                skipped += 1
                continue
            file_name = f"{stem}_{index:06d}.{extension}"
            temporary = os.path.join(images_dir, f".{file_name}.tmp")
            with open(temporary, "wb") as f:
                f.write(image["bytes"])
            os.replace(temporary, os.path.join(images_dir, file_name))
            annotations.append(
                {
                    "image": file_name,
                    "conversations": [{"from": "human", "value": SYNTHDOG_QUESTION}, {"from": "gpt", "value": text}],
                }
            )
    write_json(os.path.join(output, f"{name}.json"), annotations)
    meta_path = os.path.join(output, "meta.json")
    write_json(meta_path, {name: {"images": "images", "annotations": f"{name}.json"}})
    return meta_path, len(annotations), skipped
