"""Batched greedy decoding with a KV cache, per-row stopping and the reference's no-repeat-n-gram rule.

Matches `transformers`' `generate(do_sample=False, no_repeat_ngram_size=n, eos_token_id=[...])`: the image is
encoded once, the prompt is run once, then one token per step for every unfinished row; a row stops at its first
end token (kept in its output), and finished rows leave the batch so they cost nothing more.
"""

from collections import defaultdict
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import paddle

from .modeling.qwen2 import KVCache


class NoRepeatNGram:
    """Bans the tokens that would complete an n-gram already present in one sequence (prompt included)."""

    def __init__(self, size: int, tokens: Sequence[int]):
        self.size = size
        self.tokens: List[int] = []
        self.continuations: Dict[Tuple[int, ...], Set[int]] = defaultdict(set)
        for token in tokens:
            self.push(token)

    def push(self, token: int) -> None:
        """Append a token and record the n-gram it closes."""
        self.tokens.append(token)
        if len(self.tokens) >= self.size:
            self.continuations[tuple(self.tokens[-self.size : -1])].add(token)

    def banned(self) -> Set[int]:
        """Tokens that must not come next."""
        if len(self.tokens) < self.size - 1:
            return set()
        return self.continuations.get(tuple(self.tokens[len(self.tokens) - self.size + 1 :]), set())


def greedy_generate(
    model,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    pixel_values: Optional[np.ndarray],
    eos_token_ids: Sequence[int],
    max_new_tokens: int,
    no_repeat_ngram_size: int = 0,
    on_token: Optional[Callable[[int], None]] = None,
) -> List[List[int]]:
    """Generate greedily for a left-padded batch (`input_ids`/`attention_mask` int64 `[B, L]`).

    Returns the new tokens of each row (a list of int lists, the end token included when one was produced).
    `on_token(token)` is called with each new token of a single-row batch, for streaming.
    """
    if on_token is not None and len(input_ids) != 1:
        raise ValueError("Streaming needs a batch of one sequence.")
    batch = len(input_ids)
    end_tokens = set(eos_token_ids)
    ngram_rules = []
    if no_repeat_ngram_size > 0:
        prompts = [ids[row_mask == 1].tolist() for ids, row_mask in zip(input_ids, attention_mask)]
        ngram_rules = [NoRepeatNGram(no_repeat_ngram_size, prompt) for prompt in prompts]
    outputs: List[List[int]] = [[] for _ in range(batch)]
    active = list(range(batch))  # rows of the original batch still generating, in cache order
    dtype = model.qwen2.embed_tokens.weight.dtype
    cache = KVCache(model.config)
    mask = paddle.to_tensor(attention_mask)
    with paddle.no_grad():
        image_features = None
        if pixel_values is not None:
            image_features = model.qwen2.encode_images(paddle.to_tensor(pixel_values).astype(dtype))
        step_input = paddle.to_tensor(input_ids)
        for _ in range(max_new_tokens):
            logits = model(
                step_input, attention_mask=mask, past_key_values=cache, image_features=image_features,
                last_logits_only=True,
            ).logits[:, -1].numpy()
            image_features = None
            next_tokens = []
            for position, row in enumerate(active):
                if ngram_rules:
                    banned = list(ngram_rules[row].banned())
                    logits[position, banned] = -np.inf
                token = int(logits[position].argmax())
                next_tokens.append(token)
                outputs[row].append(token)
                if ngram_rules:
                    ngram_rules[row].push(token)
                if on_token is not None and token not in end_tokens:
                    on_token(token)
            still_running = [position for position, token in enumerate(next_tokens) if token not in end_tokens]
            if not still_running:
                break
            if len(still_running) < len(active):
                keep = paddle.to_tensor(still_running, dtype="int64")
                cache.select_rows(keep)
                mask = paddle.index_select(mask, keep)
                active = [active[position] for position in still_running]
                next_tokens = [next_tokens[position] for position in still_running]
            step_input = paddle.to_tensor(np.asarray(next_tokens, dtype=np.int64)[:, None])
            mask = paddle.concat([mask, paddle.ones([len(active), 1], dtype=mask.dtype)], axis=1)
    return outputs
