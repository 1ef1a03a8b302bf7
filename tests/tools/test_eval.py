"""tools/eval.py end to end: predictions JSONL against annotations, a model against a meta file, bad input."""

import json
import os
import subprocess
import sys

import pytest

import imports

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EVAL = os.path.join(REPO, "tools", "eval.py")


def run_eval(*args):
    result = subprocess.run([sys.executable, EVAL, *args], capture_output=True, text=True, timeout=300)
    assert "Traceback" not in result.stderr, result.stderr
    return result


@pytest.fixture
def annotations(synth_data):
    folder = os.path.dirname(synth_data)
    records = json.load(open(os.path.join(folder, "annotations.json")))[:4]
    return folder, [(os.path.join(folder, "images", r["image"]), r["conversations"][1]["value"]) for r in records]


def test_predictions_are_scored_and_reported(annotations, tmp_path):
    folder, references = annotations
    lines = [
        {"image": references[0][0], "text": references[0][1]},  # exact
        {"image": references[1][0], "text": ""},  # empty
        {"image": references[2][0], "text": references[2][1].upper()},
        {"image": "elsewhere/unrelated.png", "text": "x"},
    ]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    ann = [
        {
            "image": os.path.basename(image),
            "conversations": [{"from": "human", "value": "<image>\nOCR:"}, {"from": "gpt", "value": text}],
        }
        for image, text in references
    ]
    (tmp_path / "r.json").write_text(json.dumps(ann))
    result = run_eval(
        "--predictions",
        str(tmp_path / "p.jsonl"),
        "--references",
        str(tmp_path / "r.json"),
        "--report",
        str(tmp_path / "report.json"),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report) >= {
        "edit_distance",
        "f1",
        "precision",
        "recall",
        "bleu",
        "meteor",
        "acc",
        "norm_edit_dis",
        "samples",
    }
    samples = report["samples"]
    assert [s["prediction"] for s in samples] == [references[0][1], "", references[2][1].upper()]
    assert (samples[0]["edit_distance"], samples[0]["acc"], samples[1]["edit_distance"]) == (0.0, 1.0, 1.0)
    assert report["acc"] == pytest.approx(1 / 3)
    assert report["edit_distance"] == pytest.approx(sum(s["edit_distance"] for s in samples) / 3)
    assert report["missing_predictions"] == [os.path.basename(references[3][0])]
    assert "edit_distance" in result.stdout and "samples" in result.stdout


def test_model_is_run_over_a_meta_file(ocr_checkpoint, synth_data, tmp_path):
    result = run_eval(
        "--model_name_or_path",
        ocr_checkpoint.directory,
        "--meta_path",
        synth_data,
        "--max_new_tokens",
        "6",
        "--report",
        str(tmp_path / "report.json"),
        "--level",
        "char",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["num_samples"] == 12 and report["level"] == "char"
    assert all(0.0 <= report[name] <= 1.0 for name in ("edit_distance", "f1", "bleu", "meteor", "acc"))


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"image": "a.png", "text": "x"}\n{broken\n', "p.jsonl line 2 is not JSON (Expecting property name"),
        ('{"text": "x"}\n', 'p.jsonl line 1 is not a result: it needs "image" and "text" (or "error").'),
    ],
)
def test_bad_predictions_file(content, message, annotations, tmp_path):
    (tmp_path / "p.jsonl").write_text(content)
    (tmp_path / "r.json").write_text(
        json.dumps(
            [
                {
                    "image": "a.png",
                    "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}],
                }
            ]
        )
    )
    result = run_eval("--predictions", str(tmp_path / "p.jsonl"), "--references", str(tmp_path / "r.json"))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().startswith("error: ") and message in result.stderr


def test_missing_predictions_file(tmp_path):
    result = run_eval("--predictions", str(tmp_path / "none.jsonl"), "--references", str(tmp_path / "r.json"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: --predictions {tmp_path / 'none.jsonl'} is not a file."


def test_scoring_predictions_imports_no_paddle(annotations, tmp_path):
    """Scoring a predictions file needs only the metrics: no Paddle, no model (seconds instead of an import)."""
    folder, references = annotations
    (tmp_path / "p.jsonl").write_text(json.dumps({"image": references[0][0], "text": references[0][1]}) + "\n")
    ann = [
        {
            "image": os.path.basename(references[0][0]),
            "conversations": [{"from": "human", "value": "<image>\nOCR:"}, {"from": "gpt", "value": references[0][1]}],
        }
    ]
    (tmp_path / "r.json").write_text(json.dumps(ann))
    arguments = ["--predictions", str(tmp_path / "p.jsonl"), "--references", str(tmp_path / "r.json")]
    assert imports.frameworks_imported_by(EVAL, arguments) == []
