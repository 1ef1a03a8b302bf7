"""SynthDoG-EN parquet shards -> the training format; unreadable rows are skipped and counted."""

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from paddle_got.data.annotations import load_meta
from paddle_got.data.synthdog import convert_synthdog


def png_bytes(colour):
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_parquet_rows_become_samples(tmp_path):
    rows = [
        ({"bytes": png_bytes("white"), "path": None}, json.dumps({"gt_parse": {"text_sequence": "first page"}})),
        ({"bytes": b"not an image", "path": None}, json.dumps({"gt_parse": {"text_sequence": "broken"}})),
        ({"bytes": png_bytes("gray"), "path": None}, json.dumps({"gt_parse": {}})),
        ({"bytes": png_bytes("black"), "path": None}, json.dumps({"gt_parse": {"text_sequence": "third"}})),
    ]
    table = pa.table({"image": [r[0] for r in rows], "ground_truth": [r[1] for r in rows]})
    (tmp_path / "data").mkdir()
    pq.write_table(table, tmp_path / "data" / "train-00000-of-00001.parquet")
    meta, kept, skipped = convert_synthdog(str(tmp_path / "data"), str(tmp_path / "out"))
    assert (kept, skipped) == (2, 2)
    records = load_meta(meta)
    assert [r.turns for r in records] == [[("<image>\nOCR:", "first page")], [("<image>\nOCR:", "third")]]
    assert Image.open(records[1].images[0]).getpixel((0, 0)) == (0, 0, 0)
