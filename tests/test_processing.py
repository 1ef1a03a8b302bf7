"""GOTProcessor against docs/design.md §3-4, rebuilt by hand here: prompt ids, pixels, grids, boxes."""

import numpy as np
import pytest
from PIL import Image

from reference import SYSTEM_MESSAGE, hand_prompt

from paddle_got.errors import BadInputError, GOTError
from paddle_got.processing import GOTProcessor, OCRRequest, PromptConfig, choose_grid, parse_box

MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])


@pytest.fixture(scope="module")
def processor(ocr_checkpoint):
    return GOTProcessor.from_pretrained(ocr_checkpoint.directory)


def gradient_image(width, height, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def direct_pixels(image, size):
    """Bicubic resize, /255, CLIP normalisation, CHW, computed in float64."""
    array = np.asarray(image.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float64) / 255.0
    return ((array - MEAN) / STD).transpose(2, 0, 1)


@pytest.mark.parametrize(
    "options, query",
    [
        (dict(), "OCR: "),
        (dict(ocr_type="format"), "OCR with format: "),
        (dict(box=(1, 1, 299, 699)), "[3, 1, 996, 998] OCR: "),
        (dict(box=(30, 70, 150, 350), ocr_type="format"), "[100, 100, 500, 500] OCR with format: "),
        (dict(color="red"), "[red] OCR: "),
        (dict(color="blue", ocr_type="format"), "[blue] OCR with format: "),
    ],
)
def test_single_image_prompts_equal_the_spec(processor, options, query):
    image = gradient_image(300, 700)
    prepared = processor.prepare(OCRRequest([image], **options))
    assert prepared.input_ids == hand_prompt(processor, processor.tokens_per_tile, query)
    assert prepared.pixel_values.shape == (1, 3, 64, 64)


def test_multi_crop_prompt_and_tiles(processor):
    image = gradient_image(200, 100, seed=1)  # ratio 2 -> a 2x1 grid, then the global view
    prepared = processor.prepare(OCRRequest([image], ocr_type="format", multi_crop=True))
    assert prepared.input_ids == hand_prompt(processor, 3 * 4, "OCR with format upon the patch reference: ")
    grid = image.resize((128, 64), Image.BICUBIC)
    expected = [grid.crop((0, 0, 64, 64)), grid.crop((64, 0, 128, 64)), image]
    for tile, expected_tile in zip(prepared.pixel_values, expected):
        np.testing.assert_allclose(tile, direct_pixels(expected_tile, 64), atol=1e-6)


def test_multi_page_prompt_and_pages(processor):
    pages = [gradient_image(90, 120, seed=s) for s in range(3)]
    prepared = processor.prepare(OCRRequest(pages, multi_page=True))
    assert prepared.input_ids == hand_prompt(processor, 3 * 4, "OCR across multi pages: ")
    for tile, page in zip(prepared.pixel_values, pages):
        np.testing.assert_allclose(tile, direct_pixels(page, 64), atol=1e-6)


def test_pixels_equal_direct_pil_computation(processor):
    image = gradient_image(123, 77, seed=4)
    pixels = processor.prepare(OCRRequest([image])).pixel_values
    assert pixels.dtype == np.float32
    np.testing.assert_allclose(pixels[0], direct_pixels(image, 64), atol=1e-6)


@pytest.mark.parametrize(
    "size, max_tiles, grid",
    [
        ((200, 100), 6, (2, 1)),  # exact ratio
        ((100, 300), 6, (1, 3)),
        ((200, 200), 6, (2, 2)),  # tie with 1x1, and the image covers more than half of 2x2 tiles: the later wins
        ((64, 64), 6, (1, 1)),  # the same tie, but 64*64 <= 0.5*64*64*4: the first stays
        ((1000, 130), 6, (6, 1)),  # ratio 7.7: the widest grid allowed
        ((1000, 130), 12, (8, 1)),
        ((300, 200), 6, (3, 2)),  # 1.5 exactly
    ],
)
def test_grid_choice(size, max_tiles, grid):
    assert choose_grid(size[0], size[1], 64, 1, max_tiles) == grid


def test_batch_is_left_padded(processor):
    requests = [OCRRequest([gradient_image(80, 80)]), OCRRequest([gradient_image(200, 100)], multi_crop=True)]
    batch = processor(requests)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    short, long = [processor.prepare(request).input_ids for request in requests]
    assert ids.shape[1] == len(long) and list(ids[1]) == long and (mask[1] == 1).all()
    padding = len(long) - len(short)
    assert list(ids[0, padding:]) == short and (mask[0, :padding] == 0).all() and (mask[0, padding:] == 1).all()
    assert (ids[0, :padding] == processor.tokenizer.pad_token_id).all()
    assert batch["pixel_values"].shape == (1 + 3, 3, 64, 64)


@pytest.mark.parametrize("text, box", [("[10,20,30,40]", (10, 20, 30, 40)), (" 1.5, 2 ,3,4 ", (1.5, 2, 3, 4))])
def test_parse_box(text, box):
    assert parse_box(text) == box


@pytest.mark.parametrize("text", ["[1,2,3]", "__import__('os')", "[1,2,3,4,5]", "[a,b,c,d]", ""])
def test_malformed_box(text):
    with pytest.raises(BadInputError, match="Malformed box"):
        parse_box(text)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(box=(0, 0, 400, 10)), r"outside the 300x700 image or empty"),
        (dict(box=(50, 10, 20, 30)), r"The box \[50, 10, 20, 30\] is negative, empty or inverted"),
        (dict(box=(-1, 0, 20, 30)), r"is negative, empty or inverted"),
        (dict(box=(0, 0, 20, 30), query="OCR:"), r"A custom query replaces the box or colour query"),
        (dict(box=(0, 0, 10, 10), color="red"), r"either a box or a colour, not both"),
        (dict(color="purple"), r"Unknown colour 'purple': choose red, green or blue"),
        (dict(ocr_type="latex"), r"Unknown OCR type 'latex'"),
        (dict(color="red", multi_crop=True), r"not with multi-crop or multi-page"),
        (dict(multi_crop=True, multi_page=True), r"cannot be combined"),
    ],
)
def test_impossible_requests_are_refused(processor, options, message):
    with pytest.raises(BadInputError, match=message):
        processor.prepare(OCRRequest([gradient_image(300, 700)], **options))


def test_custom_query_replaces_the_mode_query(processor):
    prepared = processor.prepare(OCRRequest([gradient_image(40, 40)], query="OCR:"))
    assert prepared.input_ids == hand_prompt(processor, processor.tokens_per_tile, "OCR:")


def test_trained_prompt_is_the_plain_default_and_leaves_other_modes_alone(ocr_checkpoint, tmp_path):
    """A checkpoint's prompt_config.json: plain OCR uses its query; format, box, colour and --query do not."""
    import shutil

    shutil.copytree(ocr_checkpoint.directory, tmp_path / "tuned")
    (tmp_path / "tuned" / "prompt_config.json").write_text('{"query": "OCR:", "system_message": null}')
    tuned = GOTProcessor.from_pretrained(str(tmp_path / "tuned"))
    tokenizer, image = tuned.tokenizer, gradient_image(300, 700)
    pads = "<imgpad>" * tuned.tokens_per_tile
    expected = f"<|im_start|>user\n<img>{pads}</img>\nOCR:<|im_end|><|im_start|>assistant\n"
    assert tuned.prepare(OCRRequest([image])).input_ids == tokenizer.encode(expected)
    for options, query in [
        (dict(ocr_type="format"), "OCR with format: "),
        (dict(color="red"), "[red] OCR: "),
        (dict(query="Read: "), "Read: "),
    ]:
        text = f"<|im_start|>user\n<img>{pads}</img>\n{query}<|im_end|><|im_start|>assistant\n"
        assert tuned.prepare(OCRRequest([image], **options)).input_ids == tokenizer.encode(text), options


@pytest.mark.parametrize(
    "turns, query, queries",
    [
        (["<image>\nOCR:"] * 3, "OCR:", {"OCR:": 3}),
        (["<image>OCR this"], "OCR this", {"OCR this": 1}),
        (["<image>\nOCR:", "<image>\nOCR with format: "], None, {"OCR:": 1, "OCR with format: ": 1}),
        (["Read <image> please"], None, {"None": 1}),
        ([], None, {}),
    ],
    ids=["one_query", "no_newline", "mixed", "image_not_first", "no_plain_samples"],
)
def test_prompt_learned_from_training_turns(turns, query, queries):
    prompt = PromptConfig.from_training_turns(turns)
    assert (prompt.query, prompt.queries, prompt.system_message) == (query, queries, SYSTEM_MESSAGE)


def test_unreadable_prompt_config_is_one_sentence(ocr_checkpoint, tmp_path):
    import shutil

    shutil.copytree(ocr_checkpoint.directory, tmp_path / "c")
    (tmp_path / "c" / "prompt_config.json").write_text('{"query": "OCR:", "colour": 3}')
    with pytest.raises(GOTError, match=r"^Cannot read .*prompt_config\.json: .*unexpected keyword.*'colour'\.$"):
        GOTProcessor.from_pretrained(str(tmp_path / "c"))
