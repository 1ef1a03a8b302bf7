"""OCR metrics of the GOT paper (docs/design.md §8) and PaddleOCR's recognition metrics, per sample.

- `edit_distance`: character Levenshtein distance / max(len(prediction), len(reference)) (rapidfuzz);
- `precision`, `recall`, `f1`: over the SETS of tokens; precision = shared / prediction tokens, recall = shared /
  reference tokens (the usual names; GOT's official scripts pass ground truth and prediction the other way round,
  which swaps the two);
- `bleu`: sentence BLEU-4 with uniform weights and no smoothing (nltk);
- `meteor`: nltk's METEOR with exact and Porter-stem matching; WordNet synonyms are not used (its data is a
  separate download), so scores can be slightly below the paper's for paraphrases;
- `acc`, `norm_edit_dis`: PaddleOCR's RecMetric (spaces ignored): exact match, and 1 - normalised edit distance.

Tokens are words (Chinese segmented with jieba) for documents, or characters for scene text (`level="char"`).
"""

import re
import warnings
from dataclasses import dataclass, fields
from typing import Dict, Iterable, List

from rapidfuzz.distance import Levenshtein

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_WORD = re.compile(r"\w+|[^\w\s]")


class _NoSynonyms:
    """Stands in for nltk's WordNet in METEOR: no synonym matches."""

    @staticmethod
    def synsets(*args, **kwargs):
        return []


def tokenize(text: str, level: str = "word") -> List[str]:
    """Words and punctuation marks (Chinese runs segmented by jieba), or characters without spaces for "char"."""
    if level == "char":
        return [character for character in text if not character.isspace()]
    if _CJK.search(text):
        import jieba

        return [token for token in jieba.lcut(text) if token.strip()]
    return _WORD.findall(text)


def set_precision_recall_f1(prediction: List[str], reference: List[str]):
    """`(precision, recall, f1)` over token sets; an empty side gives 0 (two empty sides give 1)."""
    predicted, expected = set(prediction), set(reference)
    if not predicted and not expected:
        return 1.0, 1.0, 1.0
    shared = len(predicted & expected)
    precision = shared / len(predicted) if predicted else 0.0
    recall = shared / len(expected) if expected else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def bleu(prediction: List[str], reference: List[str]) -> float:
    """Sentence BLEU-4 (nltk, uniform weights, no smoothing); 0 when either side is empty."""
    from nltk.translate.bleu_score import sentence_bleu

    if not prediction or not reference:
        return float(prediction == reference)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # nltk warns whenever a short text has no 4-gram match
        return float(sentence_bleu([reference], prediction))


def meteor(prediction: List[str], reference: List[str]) -> float:
    """nltk METEOR with exact and stem matches (no WordNet synonyms); 0 when either side is empty."""
    from nltk.translate.meteor_score import meteor_score

    if not prediction or not reference:
        return float(prediction == reference)
    return float(meteor_score([reference], prediction, wordnet=_NoSynonyms()))


@dataclass
class SampleScores:
    """Every metric of one prediction against its reference."""

    edit_distance: float
    f1: float
    precision: float
    recall: float
    bleu: float
    meteor: float
    acc: float
    norm_edit_dis: float


METRIC_NAMES = tuple(f.name for f in fields(SampleScores))  # in the order the reports list them


def score(prediction: str, reference: str, level: str = "word") -> SampleScores:
    """All metrics of one sample."""
    predicted_tokens, reference_tokens = tokenize(prediction, level), tokenize(reference, level)
    precision, recall, f1 = set_precision_recall_f1(predicted_tokens, reference_tokens)
    no_space_prediction, no_space_reference = prediction.replace(" ", ""), reference.replace(" ", "")
    return SampleScores(
        edit_distance=Levenshtein.normalized_distance(prediction, reference),
        f1=f1,
        precision=precision,
        recall=recall,
        bleu=bleu(predicted_tokens, reference_tokens),
        meteor=meteor(predicted_tokens, reference_tokens),
        acc=float(no_space_prediction == no_space_reference),
        norm_edit_dis=1.0 - Levenshtein.normalized_distance(no_space_prediction, no_space_reference),
    )


def average(scores: Iterable[SampleScores]) -> Dict[str, float]:
    """The mean of each metric over samples (all 0 for no sample)."""
    scores = list(scores)
    return {name: sum(getattr(s, name) for s in scores) / len(scores) if scores else 0.0 for name in METRIC_NAMES}
