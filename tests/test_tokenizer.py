"""GOTTokenizer: special-token ids as docs/design.md §2 places them, splitting, decoding, both file kinds."""

import os
import shutil

import pytest
from transformers.convert_slow_tokenizer import TikTokenConverter

from paddle_got.errors import GOTError
from paddle_got.tokenizer import GOTTokenizer

GOT_SPECIALS = ["<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>", "<img>", "</img>", "<imgpad>"]
ALL_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"<|extra_{i}|>" for i in range(205)] + GOT_SPECIALS


@pytest.fixture(scope="module")
def tokenizer(ocr_checkpoint):
    return GOTTokenizer.from_pretrained(ocr_checkpoint.directory)


def num_ranks(directory):
    with open(os.path.join(directory, "qwen.tiktoken")) as f:
        return sum(1 for line in f if line.strip())


def test_special_ids_follow_the_ranks_in_order(tokenizer, ocr_checkpoint):
    first = num_ranks(ocr_checkpoint.directory)
    assert [tokenizer.token_id(token) for token in ALL_SPECIALS] == list(range(first, first + len(ALL_SPECIALS)))
    assert len(tokenizer) == first + 217
    assert tokenizer.eos_token_ids == (first + 2, first) and tokenizer.pad_token_id == first


def test_digits_are_split_one_per_token_and_no_bos(tokenizer):
    ids = tokenizer.encode("2024")
    assert len(ids) == 4 and [tokenizer.decode([i]) for i in ids] == ["2", "0", "2", "4"]


def test_special_tokens_in_text_are_encoded_and_skipped_when_decoding(tokenizer):
    ids = tokenizer.encode("<|im_start|>user\n<img><imgpad></img>OCR: ")
    assert ids[0] == tokenizer.token_id("<|im_start|>")
    assert tokenizer.token_id("<imgpad>") in ids
    assert tokenizer.decode(ids) == "user\nOCR: "
    assert tokenizer.decode(ids, skip_special_tokens=False) == "<|im_start|>user\n<img><imgpad></img>OCR: "


def test_tokenizer_json_gives_the_same_ids(tmp_path, ocr_checkpoint, tokenizer):
    """An HF tokenizer.json made from the same ranks: same special ids, same BPE (apart from digit grouping)."""
    shutil.copy(os.path.join(ocr_checkpoint.directory, "qwen.tiktoken"), tmp_path)
    converted = TikTokenConverter(str(tmp_path / "qwen.tiktoken"), additional_special_tokens=ALL_SPECIALS).converted()
    converted.save(str(tmp_path / "tokenizer.json"))
    os.remove(tmp_path / "qwen.tiktoken")
    from_json = GOTTokenizer.from_pretrained(str(tmp_path))
    assert [from_json.token_id(t) for t in ALL_SPECIALS] == [tokenizer.token_id(t) for t in ALL_SPECIALS]
    text = "<|im_start|>system\nYou should follow the instructions.<|im_end|><img><imgpad></img>\nOCR with format: "
    assert from_json.encode(text) == tokenizer.encode(text)
    assert from_json.decode(from_json.encode(text)) == tokenizer.decode(tokenizer.encode(text))


def test_missing_tokenizer_is_one_sentence(tmp_path):
    with pytest.raises(GOTError, match=r"No tokenizer in .*: expected qwen\.tiktoken or tokenizer\.json\.$"):
        GOTTokenizer.from_pretrained(str(tmp_path))


def test_corrupt_tokenizer_file(tmp_path):
    (tmp_path / "qwen.tiktoken").write_text("this is not base64 rank data\n")
    with pytest.raises(GOTError, match=r"Cannot read the tokenizer file .*qwen\.tiktoken"):
        GOTTokenizer.from_pretrained(str(tmp_path))


PARITY_TEXTS = [
    "The quick brown fox's 3 jumps, they'll say: 2024-12-01!",
    "表格 第1行\n\n  indented   line\r\nend\t tab",
    "Cafe\u0301 and café (NFC), emoji 🙂, $\\frac{a}{b}$ and \\begin{tabular}{|c|}",
    "<|im_start|>system\nYou should follow the instructions.<|im_end|><|im_start|>user\n<img><imgpad><imgpad></img>"
    "\n[120, 33, 900, 512] OCR with format: <|im_end|><|im_start|>assistant\n<ref>x</ref><box>(1,2)</box>",
]


@pytest.mark.parametrize("text", PARITY_TEXTS, ids=["english", "chinese_whitespace", "nfc_math", "chat"])
def test_tiktoken_reader_equals_paddlenlp_qwen_tokenizer(text, tokenizer, ocr_checkpoint):
    """Our tiktoken reader against paddlenlp's QWenTokenizer (what PaddleMIX reads GOT's vocabulary with)."""
    from paddlenlp.transformers.qwen.tokenizer import QWenTokenizer

    qwen = QWenTokenizer(vocab_file=os.path.join(ocr_checkpoint.directory, "qwen.tiktoken"))
    qwen.add_tokens(GOT_SPECIALS, special_tokens=True)
    expected = qwen.convert_tokens_to_ids(qwen.tokenize(text))
    assert tokenizer.encode(text) == expected
    assert tokenizer.decode(expected) == qwen.decode(expected, skip_special_tokens=True)
    assert tokenizer.decode(expected, skip_special_tokens=False) == qwen.decode(expected)
    assert len(tokenizer) == len(qwen)
