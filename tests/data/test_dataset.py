"""Training data: label masking by hand, truncation, missing images, malformed annotations, the collator."""

import json
import os

import pytest
from PIL import Image

from reference import hand_prompt

from paddle_got.data.annotations import load_meta
from paddle_got.data.dataset import GOTDataset, collate_right_padded
from paddle_got.errors import DataError
from paddle_got.processing import GOTProcessor


@pytest.fixture(scope="module")
def processor(ocr_checkpoint):
    return GOTProcessor.from_pretrained(ocr_checkpoint.directory)


def write_data(folder, records, images=("a.png",), jsonl=False, size=(90, 60)):
    """An image folder, annotations (JSON array or JSONL) and a meta file; returns the meta path."""
    (folder / "imgs").mkdir(parents=True, exist_ok=True)
    for name in images:
        Image.new("RGB", size, "white").save(folder / "imgs" / name)
    with open(folder / ("ann.jsonl" if jsonl else "ann.json"), "w") as f:
        if jsonl:
            f.write("".join(json.dumps(r) + "\n" for r in records))
        else:
            json.dump(records, f, indent=1)
    with open(folder / "meta.json", "w") as f:
        json.dump({"set": {"images": "imgs", "annotations": "ann.jsonl" if jsonl else "ann.json"}}, f)
    return str(folder / "meta.json")


def sample(image="a.png", question="<image>\nOCR:", answer="Hello 42"):
    return {"image": image, "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}


def test_labels_supervise_only_the_answer_and_im_end(processor, tmp_path):
    dataset = GOTDataset(load_meta(write_data(tmp_path, [sample()])), processor)
    example = dataset[0]
    tokenizer = processor.tokenizer
    prompt = hand_prompt(processor, processor.tokens_per_tile, "OCR:")
    answer = tokenizer.encode("Hello 42") + [tokenizer.token_id("<|im_end|>")]
    assert example["input_ids"] == prompt + answer
    assert example["labels"] == [-100] * len(prompt) + answer
    assert example["pixel_values"].shape == (1, 3, 64, 64)


def test_second_turn_is_supervised_too(processor, tmp_path):
    record = sample()
    record["conversations"] += [{"from": "human", "value": "Again?"}, {"from": "gpt", "value": "Yes"}]
    example = GOTDataset(load_meta(write_data(tmp_path, [record])), processor)[0]
    tokenizer = processor.tokenizer
    second_prompt = tokenizer.encode("<|im_start|>user\nAgain?<|im_end|><|im_start|>assistant\n")
    tail = second_prompt + tokenizer.encode("Yes") + [tokenizer.token_id("<|im_end|>")]
    assert example["input_ids"][-len(tail) :] == tail
    assert example["labels"][-len(tail) :] == [-100] * len(second_prompt) + tail[len(second_prompt) :]


def test_image_list_is_one_multi_page_document(processor, tmp_path):
    meta = write_data(tmp_path, [sample(image=["a.png", "b.png"])], images=("a.png", "b.png"))
    example = GOTDataset(load_meta(meta), processor)[0]
    pad = processor.tokenizer.token_id("<imgpad>")
    assert example["input_ids"].count(pad) == 2 * processor.tokens_per_tile
    assert example["pixel_values"].shape[0] == 2


def test_truncation_cuts_the_answer_never_the_image_tokens(processor, tmp_path):
    long_answer = "word " * 200
    records = [sample(answer=long_answer), sample(answer="short")]
    full = GOTDataset(load_meta(write_data(tmp_path, records)), processor)[0]
    prompt_length = full["labels"].index(next(label for label in full["labels"] if label != -100))
    dataset = GOTDataset(load_meta(write_data(tmp_path, records)), processor, max_length=prompt_length + 10)
    example = dataset[0]
    assert len(example["input_ids"]) == prompt_length + 10
    assert example["input_ids"][:prompt_length] == full["input_ids"][:prompt_length]
    assert example["labels"][prompt_length:] == full["labels"][prompt_length : prompt_length + 10]
    assert dataset.stats.truncated == 1 and dataset.stats.samples == 2


def test_prompt_longer_than_max_length_is_skipped_and_counted(processor, tmp_path):
    meta = write_data(tmp_path, [sample(question="<image>\n" + "long " * 100), sample()])
    normal_length = len(GOTDataset(load_meta(meta), processor)[1]["input_ids"])
    dataset = GOTDataset(load_meta(meta), processor, max_length=normal_length)
    assert dataset.stats.too_long == 1 and len(dataset) == 1


def test_missing_images_are_counted_named_and_skipped(processor, tmp_path, caplog):
    meta = write_data(tmp_path, [sample("a.png"), sample("gone.png"), sample("lost.png")])
    dataset = GOTDataset(load_meta(meta), processor)
    assert len(dataset) == 1
    assert [os.path.basename(p) for p in dataset.stats.missing_images] == ["gone.png", "lost.png"]
    with pytest.raises(DataError, match=r"^2 image files are missing: .*gone\.png, .*lost\.png\.$"):
        GOTDataset(load_meta(meta), processor, strict=True)


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"image": "a.png", "conversations": []}\n{"image": ', r"ann\.jsonl line 1: \"conversations\" must be"),
        (
            '\n\n{"image": "a.png", "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt"',
            r"ann\.jsonl line 3: malformed JSON",
        ),
        (
            '{"conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}]}',
            r"line 1: \"image\" must be",
        ),
        (
            '{"image": "a.png", "conversations": [{"from": "gpt", "value": "<image>"}, {"from": "human", "value": "x"}]}',  # noqa: E501
            r"line 1: turns must alternate",
        ),
        (
            '{"image": "a.png", "conversations": [{"from": "human", "value": "OCR:"}, {"from": "gpt", "value": "x"}]}',
            r"line 1: the first human turn must contain <image>",
        ),
    ],
)
def test_malformed_jsonl_names_file_and_line(content, message, tmp_path):
    meta = write_data(tmp_path, [], jsonl=True)
    (tmp_path / "ann.jsonl").write_text(content)
    with pytest.raises(DataError, match=message):
        load_meta(meta)


def test_malformed_record_in_json_array_names_its_line_and_sample(tmp_path):
    meta = write_data(tmp_path, [sample(), sample(), {"image": 3, "conversations": []}])
    with pytest.raises(DataError, match=r"ann\.json line \d+ \(sample 3\): \"image\" must be"):
        load_meta(meta)
    line = int(str(pytest.raises(DataError, load_meta, meta).value).split(" line ")[1].split(" ")[0])
    assert (tmp_path / "ann.json").read_text().splitlines()[line - 1].strip() == "{"


def test_compact_json_array_counts_samples_on_one_line(tmp_path):
    """json.dump without indent puts every record on line 1: the sample number tells them apart."""
    meta = write_data(tmp_path, [sample()])
    (tmp_path / "ann.json").write_text(json.dumps([sample(), sample(), sample(image=""), sample()]))
    with pytest.raises(DataError, match=r"ann\.json line 1 \(sample 3\): \"image\" must be"):
        load_meta(meta)


def test_one_missing_image_is_counted_in_the_singular(processor, tmp_path):
    meta = write_data(tmp_path, [sample(), sample(image="gone.png")])
    with pytest.raises(DataError, match=r"^1 image file is missing: .*gone\.png\.$"):
        GOTDataset(load_meta(meta), processor, strict=True)


def test_bad_meta_file(tmp_path):
    (tmp_path / "meta.json").write_text('{"set": {"images": "imgs"}}')
    with pytest.raises(DataError, match=r"dataset 'set' needs \"images\" and \"annotations\" paths"):
        load_meta(str(tmp_path / "meta.json"))


def test_collate_pads_on_the_right(processor, tmp_path):
    meta = write_data(tmp_path, [sample(answer="a"), sample(answer="a much longer answer")])
    dataset = GOTDataset(load_meta(meta), processor)
    batch = collate_right_padded([dataset[0], dataset[1]], pad_token_id=processor.tokenizer.pad_token_id)
    short = len(dataset[0]["input_ids"])
    mask = batch["attention_mask"].numpy()
    assert (mask[0, :short] == 1).all() and (mask[0, short:] == 0).all() and (mask[1] == 1).all()
    assert (batch["labels"].numpy()[0, short:] == -100).all()
    assert batch["pixel_values"].shape == [2, 3, 64, 64]


def test_synthetic_data_loads(synth_data, processor):
    records = load_meta(synth_data)
    assert len(records) == 12
    assert all(os.path.isfile(r.images[0]) and r.turns[0][0] == "<image>\nOCR:" and r.turns[0][1] for r in records)
    assert len(GOTDataset(records, processor)) == 12
