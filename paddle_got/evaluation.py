"""Scoring predictions against annotated references: matching, per-sample metrics, the JSON report.

Predictions are the JSONL that tools/infer.py writes (`{"image": ..., "text": ...}`); references are annotations
in the training format (the first `gpt` turn is the reference text). They are matched by image path, or by file
name when the paths differ (predictions usually carry the path infer.py was given).
"""

import json
import os
from dataclasses import asdict
from typing import Dict, List, Optional, Tuple

from tqdm import tqdm

from .data.annotations import Record, parse_record, read_annotations
from .errors import DataError, GOTError
from .metrics import METRIC_NAMES, average, score
from .outputs import document_key, read_results, write_atomic


def read_predictions(path: str) -> Dict[str, str]:
    """`{document_key: text}` of a predictions JSONL (`outputs.read_results`); inputs that failed have none."""
    return {
        document_key(record["image"], record.get("page")): record["text"]
        for record in read_results(path)
        if record.get("error") is None
    }


def read_references(path: str) -> List[Tuple[str, str]]:
    """`[(image, reference text)]` from a training-format annotation file (JSON array or JSONL)."""
    references = []
    for raw, where in read_annotations(path):
        record = parse_record(raw, "", f"{path} {where}", multi_crop=False)
        references.append((record.images[0], record.turns[0][1]))
    if not references:
        raise DataError(f"{path} holds no annotation.")
    return references


def match(predictions: Dict[str, str], references: List[Tuple[str, str]]):
    """`(pairs [(image, prediction, reference)], images without a prediction)`, matched by path then file name."""
    by_name: Dict[str, Optional[str]] = {}
    for image in predictions:
        name = os.path.basename(image)
        by_name[name] = None if name in by_name else image  # None: the file name is ambiguous
    pairs, missing = [], []
    for image, reference in references:
        key = image if image in predictions else by_name.get(os.path.basename(image))
        if key is None:
            missing.append(image)
        else:
            pairs.append((image, predictions[key], reference))
    return pairs, missing


def build_report(pairs, missing: List[str], level: str) -> dict:
    """The report: averages at the top level (METRIC_NAMES), then `samples` and `missing_predictions`."""
    samples, scores = [], []
    for image, prediction, reference in tqdm(pairs, desc="Scoring", unit="sample", disable=len(pairs) < 50):
        scores.append(score(prediction, reference, level))
        samples.append({"image": image, "prediction": prediction, "reference": reference, **asdict(scores[-1])})
    report = average(scores)
    report.update(num_samples=len(samples), level=level, samples=samples, missing_predictions=missing)
    return report


def evaluate_predictions(predictions_path: str, references_path: str, level: str = "word") -> dict:
    """Score a predictions JSONL against an annotation file."""
    pairs, missing = match(read_predictions(predictions_path), read_references(references_path))
    if not pairs:
        raise GOTError(f"No prediction in {predictions_path} matches an image of {references_path}.")
    return build_report(pairs, missing, level)


def evaluate_model(reader, records: List[Record], level: str = "word", **recognize_options) -> dict:
    """Read the first image of every record (`load_meta`'s output) with `reader` (a GOT) and score the texts."""
    images = [record.images[0] for record in records]
    pairs, missing = [], []
    results = reader.iter_recognize(images, **recognize_options)
    for record, result in tqdm(zip(records, results), total=len(records), desc="Reading", unit="image"):
        if result.error is not None:
            missing.append(record.images[0])
        else:
            pairs.append((record.images[0], result.text, record.turns[0][1]))
    return build_report(pairs, missing, level)


def format_table(report: dict) -> str:
    """A short text table of the averages."""
    lines = [f"{'metric':<14} {'value':>8}"]
    lines += [f"{name:<14} {report[name]:>8.4f}" for name in METRIC_NAMES]
    lines.append(f"{'samples':<14} {report['num_samples']:>8}")
    if report["missing_predictions"]:
        lines.append(f"{'unmatched':<14} {len(report['missing_predictions']):>8}")
    return "\n".join(lines)


def write_report(report: dict, path: str) -> None:
    """The report as JSON, written atomically."""
    write_atomic(path, json.dumps(report, ensure_ascii=False, indent=1) + "\n")
