"""GOTTokenizer: the Qwen-1 tokenizer with GOT's special tokens, from `qwen.tiktoken` or an HF `tokenizer.json`.

`qwen.tiktoken` is read with `tiktoken` directly, exactly as Qwen-1's own tokenizer (and paddlenlp's QWenTokenizer)
builds it: the Qwen-1 split pattern (one digit per token), NFC-normalised input, then the specials numbered after
the ranks: `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, `<|extra_0|>`..`<|extra_204|>`, then GOT's own, so
`<imgpad>` is 151859 in the released vocabulary and whatever follows in a smaller one. `tokenizer.json` (the `-hf`
checkpoint) goes through the `tokenizers` library.
"""

import base64
import os
import shutil
import unicodedata
from typing import Dict, List, Sequence

from .constants import ENDOFTEXT, GOT_SPECIAL_TOKENS, IM_END, QWEN_SPECIAL_TOKENS
from .errors import GOTError, reason

TIKTOKEN_FILE = "qwen.tiktoken"
TOKENIZER_JSON = "tokenizer.json"


# Qwen-1's pre-tokenizer: contractions, letter runs, ONE digit per token, punctuation runs, newlines, spaces.
QWEN_SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def read_tiktoken_ranks(path: str) -> Dict[bytes, int]:
    """`{token bytes: rank}` from a `qwen.tiktoken` file (base64 token, space, rank, one per line)."""
    with open(path, "rb") as f:
        return {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in f if line.strip())}


class _TiktokenBackend:
    """`tiktoken` over a `qwen.tiktoken` rank file, with Qwen-1's and GOT's specials after the ranks."""

    def __init__(self, path: str):
        import tiktoken

        ranks = read_tiktoken_ranks(path)
        specials = QWEN_SPECIAL_TOKENS + GOT_SPECIAL_TOKENS
        self.special_ids = {token: len(ranks) + index for index, token in enumerate(specials)}
        self.first_special_id = len(ranks)
        self.encoding = tiktoken.Encoding(
            "Qwen", pat_str=QWEN_SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens=self.special_ids
        )

    def encode(self, text: str) -> List[int]:
        return self.encoding.encode(unicodedata.normalize("NFC", text), allowed_special="all")

    def decode(self, ids: Sequence[int], skip_special_tokens: bool) -> str:
        if skip_special_tokens:
            ids = [i for i in ids if i < self.first_special_id]
        return self.encoding.decode(list(ids), errors="replace")

    def token_to_id(self, token: str):
        return self.special_ids.get(token)

    def __len__(self) -> int:
        return self.encoding.n_vocab


class _TokenizerJsonBackend:
    """The `tokenizers` library over a Hugging Face `tokenizer.json`."""

    def __init__(self, path: str):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(path)

    def encode(self, text: str) -> List[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str):
        return self.tokenizer.token_to_id(token)

    def __len__(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)


class GOTTokenizer:
    """Text <-> ids for GOT. Special tokens written in the text are encoded as their ids; no BOS is added."""

    def __init__(self, directory: str):
        for file_name, backend in ((TIKTOKEN_FILE, _TiktokenBackend), (TOKENIZER_JSON, _TokenizerJsonBackend)):
            path = os.path.join(directory, file_name)
            if os.path.isfile(path):
                try:
                    self.backend = backend(path)
                except Exception as err:  # the backends raise their own types for malformed files
                    raise GOTError(f"Cannot read the tokenizer file {path}: {reason(err)}.") from err
                self.source_file = path
                break
        else:
            raise GOTError(f"No tokenizer in {directory}: expected {TIKTOKEN_FILE} or {TOKENIZER_JSON}.")
        missing = [t for t in (ENDOFTEXT, IM_END) + GOT_SPECIAL_TOKENS if self.backend.token_to_id(t) is None]
        if missing:
            raise GOTError(f"The tokenizer in {directory} lacks the special tokens {', '.join(missing)}.")
        self.pad_token_id = self.token_id(ENDOFTEXT)
        self.eos_token_ids = (self.token_id(IM_END), self.token_id(ENDOFTEXT))

    @classmethod
    def from_pretrained(cls, directory: str) -> "GOTTokenizer":
        """Load from a checkpoint directory holding `qwen.tiktoken` or `tokenizer.json`."""
        return cls(directory)

    def save_pretrained(self, directory: str) -> None:
        """Copy the tokenizer file into `directory`."""
        os.makedirs(directory, exist_ok=True)
        shutil.copy2(self.source_file, directory)

    def encode(self, text: str) -> List[int]:
        """Token ids of `text` (a list of ints)."""
        return self.backend.encode(text)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """The text of `ids`; special tokens dropped unless `skip_special_tokens` is False."""
        return self.backend.decode(ids, skip_special_tokens)

    def token_id(self, token: str) -> int:
        """The id of a special token such as `<imgpad>`."""
        return self.backend.token_to_id(token)

    def __len__(self) -> int:
        return len(self.backend)


def write_tiktoken_ranks(path: str, ranks: Dict[bytes, int]) -> None:
    """Write ranks in the `qwen.tiktoken` format: base64 token, space, rank, one per line."""
    with open(path, "w", encoding="utf-8") as f:
        for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
            f.write(f"{base64.b64encode(token).decode()} {rank}\n")
