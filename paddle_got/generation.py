"""The rules that choose and stop one sequence's tokens: the reference's no-repeat-n-gram ban, and a guard that
ends a sequence caught in a loop. The engine (`engine.py`) applies them per request."""

from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Set, Tuple

import numpy as np


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


class RepetitionGuard:
    """Spots a sequence stuck in a loop: the same block of 1..`max_period` tokens repeated back to back.

    A loop is a block of p tokens followed by copies of itself covering at least max(2p, `min_repeated`) more
    tokens (GOT's known failure on dense tables repeats a row or a cell forever). `push` returns True once the
    newest token completes such a loop; `keep` is then how many tokens to keep: the text before the loop and the
    block once.
    """

    def __init__(self, max_period: int = 64, min_repeated: int = 48):
        self.max_period = max_period
        self.min_repeated = min_repeated
        self.tokens: List[int] = []
        self.runs = np.zeros(max_period, dtype=np.int64)  # runs[p - 1]: tokens equal to the one p before, in a row
        self.keep: Optional[int] = None

    @property
    def holdback(self) -> int:
        """How many of the newest tokens a loop found later could still cut (streams wait for them)."""
        return max(2 * self.max_period, self.min_repeated)

    def push(self, token: int) -> bool:
        """Take the next token; True when it completes a loop (and `keep` is set)."""
        self.tokens.append(token)
        earlier = self.tokens[-2 : -self.max_period - 2 : -1]  # the token 1, 2, ... back
        matches = np.zeros(self.max_period, dtype=bool)
        matches[: len(earlier)] = np.asarray(earlier) == token
        self.runs = np.where(matches, self.runs + 1, 0)
        periods = np.arange(1, self.max_period + 1)
        looping = np.nonzero(self.runs >= np.maximum(2 * periods, self.min_repeated))[0]
        if len(looping) == 0:
            return False
        self.keep = len(self.tokens) - int(self.runs[looping[0]])
        return True
