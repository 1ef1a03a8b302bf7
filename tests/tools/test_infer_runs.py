"""Long runs of tools/infer.py: results kept as made, resumed after SIGKILL, sharded over paddle.distributed.launch
processes and over 2 "nodes" on localhost, manifests, recursion, failures and the error budget. The texts are the
transformers reference's greedy texts."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import reference

from paddle_got.processing import OCRRequest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INFER = os.path.join(REPO, "tools", "infer.py")
MAX_NEW_TOKENS = 12
NUM_PAGES = 12
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "GLOG_minloglevel": "2"}


@pytest.fixture(scope="module")
def archive(tmp_path_factory, ocr_checkpoint):
    """A tree of 12 pictures (4 of them in sub/ and sub/deeper/), one broken file, and the reference's texts."""
    root = tmp_path_factory.mktemp("archive")
    (root / "sub" / "deeper").mkdir(parents=True)
    paths = []
    for index in range(NUM_PAGES):
        folder = root / ("sub" if index in (8, 9) else "sub/deeper" if index in (10, 11) else "")
        pixels = np.random.default_rng(index).integers(0, 256, (60 + index, 90, 3), dtype=np.uint8)
        path = folder / f"page{index:02d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    (root / "broken.png").write_bytes(b"not a picture")
    requests = [OCRRequest([Image.open(path).convert("RGB")]) for path in paths]
    texts = reference.expected_texts(ocr_checkpoint, requests, 20, MAX_NEW_TOKENS)
    return {"root": str(root), "texts": dict(zip(paths, texts)), "broken": str(root / "broken.png")}


def infer_command(checkpoint, *args):
    return [
        sys.executable,
        INFER,
        "--model_name_or_path",
        checkpoint.directory,
        "--max_new_tokens",
        str(MAX_NEW_TOKENS),
        *args,
    ]


def launch_command(command, log_dir, nproc=2, nodes=()):
    """`command` (a tools/infer.py command line) under paddle.distributed.launch with `nproc` processes."""
    launcher = [sys.executable, "-m", "paddle.distributed.launch", "--log_level", "WARNING", *nodes]
    return [*launcher, "--nproc_per_node", str(nproc), "--log_dir", str(log_dir), *command[1:]]


def run(command, check_exit=0):
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO, env=ENV)
    assert result.returncode == check_exit, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr
    return result


def results(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def assert_reference_texts(path, archive):
    """Every picture exactly once, in input order (sorted paths), with the reference's text."""
    records = results(path)
    assert [r["image"] for r in records] == sorted(archive["texts"])
    assert {r["image"]: r["text"] for r in records} == archive["texts"]


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_read_a_recursive_tree_as_one_does(ocr_checkpoint, archive, tmp_path):
    output = tmp_path / "out.jsonl"
    command = infer_command(ocr_checkpoint, "--image_file", archive["root"], "--recursive", "--output", str(output))
    result = run(launch_command(command, tmp_path / "logs"), check_exit=2)
    assert_reference_texts(output, archive)
    errors = results(str(output) + ".errors.jsonl")
    assert errors == [
        {
            "image": archive["broken"],
            "error": f"{archive['broken']}: cannot read the image (file is corrupt or not an image).",
        }
    ]
    report = json.load(open(str(output) + ".report.json"))
    assert report["total"]["inputs"] == NUM_PAGES + 1 and report["total"]["done"] == NUM_PAGES
    assert report["total"]["failed"] == 1 and report["total"]["skipped"] == 0
    assert [r["inputs"] for r in report["ranks"]] == [7, 6]  # index modulo 2 of 13 documents
    assert sum(r["new_tokens"] for r in report["ranks"]) == report["total"]["new_tokens"] > 0
    assert not os.path.exists(str(output) + ".parts")
    worker0, worker1 = (open(tmp_path / "logs" / f"workerlog.{rank}", encoding="utf-8").read() for rank in (0, 1))
    assert "Read 12 of 13 inputs (12 pages)" in worker0 and "1 failed." in worker0
    # One progress bar, rank 0's, over the whole run: both ranks' pages, their rate and the time left.
    assert re.search(r"Reading: 100%\|\S+\| 13/13 \[[\d:]+<00:00, +[\d.]+(page/s|s/page)\]", worker0)
    assert "Reading:" not in worker1
    assert "Traceback" not in worker0 + result.stderr and "FatalError" not in worker0 + worker1


def test_killed_run_resumes_with_another_process_count(ocr_checkpoint, archive, tmp_path):
    output = tmp_path / "out.jsonl"
    command = infer_command(ocr_checkpoint, "--image_file", archive["root"], "--recursive", "--output", str(output))
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO, env=ENV)
    deadline = time.time() + 300
    while time.time() < deadline and (not output.exists() or output.read_text().count('"text"') < 4):
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    kept = output.read_text().count('"text"')
    assert 4 <= kept < NUM_PAGES
    with open(output, "a", encoding="utf-8") as f:
        f.write('{"image": "' + archive["root"] + "/page0")  # what a kill in the middle of a line leaves
    resumed = run(launch_command(command + ["--resume"], tmp_path / "logs"), check_exit=2)
    assert_reference_texts(output, archive)
    report = json.load(open(str(output) + ".report.json"))
    assert report["total"]["skipped"] == kept and report["total"]["done"] == NUM_PAGES - kept
    assert "Traceback" not in resumed.stderr

    started = time.perf_counter()
    again = run(command + ["--resume"], check_exit=2)  # a finished run: nothing is read again
    assert time.perf_counter() - started < 30
    assert_reference_texts(output, archive)
    assert f"Read 0 of {NUM_PAGES + 1} inputs (0 pages)" in again.stderr
    assert f"{NUM_PAGES} kept from an earlier run, 1 failed." in again.stderr.splitlines()[-1]


def test_resume_refuses_other_options_unless_overwrite(ocr_checkpoint, archive, tmp_path):
    output = tmp_path / "out.jsonl"
    pages = [os.path.join(archive["root"], f"page0{index}.png") for index in range(3)]
    run(infer_command(ocr_checkpoint, "--image_file", *pages, "--output", str(output)))
    refused = run(
        infer_command(
            ocr_checkpoint, "--image_file", *pages, "--output", str(output), "--resume", "--ocr_type", "format"
        ),
        check_exit=2,
    )
    assert refused.stderr.strip().splitlines() == [
        f"error: {output} was read with other options (ocr_type 'ocr' -> 'format'): rerun with the same options, "
        "or add --overwrite to read everything again."
    ]
    assert_first = results(output)
    assert [r["text"] for r in assert_first] == [archive["texts"][page] for page in pages]
    run(
        infer_command(
            ocr_checkpoint,
            "--image_file",
            *pages,
            "--output",
            str(output),
            "--resume",
            "--ocr_type",
            "format",
            "--overwrite",
        )
    )
    report = json.load(open(str(output) + ".report.json"))
    assert report["settings"]["ocr_type"] == "format" and report["total"]["done"] == 3


def test_manifest_directory_output_and_error_budget(ocr_checkpoint, archive, tmp_path):
    manifest = tmp_path / "pages.txt"
    listed = [f"page0{index}.png" for index in range(4)]
    manifest.write_text(
        "# a manifest of the archive\n"
        + "\n".join([os.path.join(archive["root"], name) for name in listed] + ["nowhere.png", archive["broken"]])
        + "\n"
    )
    out_dir = tmp_path / "texts"
    run(infer_command(ocr_checkpoint, "--image_file", str(manifest), "--output", str(out_dir)), check_exit=2)
    assert sorted(os.listdir(out_dir)) == [name.replace(".png", ".txt") for name in listed]
    for name in listed:
        assert (out_dir / name.replace(".png", ".txt")).read_text() == archive["texts"][
            os.path.join(archive["root"], name)
        ] + "\n"
    errors = results(str(out_dir) + ".errors.jsonl")
    assert [e["error"] for e in errors] == [
        f"{tmp_path}/nowhere.png: no such file.",
        f"{archive['broken']}: cannot read the image (file is corrupt or not an image).",
    ]

    (out_dir / "page01.txt").unlink()
    resumed = run(
        infer_command(ocr_checkpoint, "--image_file", str(manifest), "--output", str(out_dir), "--resume"), check_exit=2
    )
    assert resumed.stderr.strip().splitlines()[-1].startswith("Read 1 of 6 inputs (1 page) in ")
    assert (out_dir / "page01.txt").read_text() == archive["texts"][os.path.join(archive["root"], "page01.png")] + "\n"

    # page00, then the two failures: 2 of 6 is more than 0.2 allows, so page01 to page03 are not read.
    first, *others = [os.path.join(archive["root"], name) for name in listed]
    budgeted = tmp_path / "budgeted.txt"
    budgeted.write_text("\n".join([first, "nowhere.png", archive["broken"], *others]) + "\n")
    output = tmp_path / "b.jsonl"
    command = infer_command(ocr_checkpoint, "--image_file", str(budgeted), "--output", str(output))
    stopped = run(command + ["--max_error_rate", "0.2"], check_exit=2)
    summary, reason = stopped.stderr.strip().splitlines()[-2:]
    assert summary.startswith("Read 1 of 6 inputs (1 page) in ") and summary.endswith(" 2 failed.")
    assert reason == (
        "error: Stopping: 2 of 6 inputs failed, more than --max_error_rate 0.2 allows; the results so far are kept "
        "(rerun with --resume to go on)."
    )
    assert results(output) == [{"image": first, "text": archive["texts"][first]}]
    assert results(str(output) + ".errors.jsonl") == errors  # the failures that stopped it
    report = json.load(open(str(output) + ".report.json"))
    assert [report["total"][name] for name in ("inputs", "done", "failed")] == [6, 1, 2]


def test_a_sharded_run_over_its_error_budget_stops_every_rank_cleanly(ocr_checkpoint, archive, tmp_path):
    pages = [os.path.join(archive["root"], f"page{index:02d}.png") for index in range(8)]
    manifest = tmp_path / "pages.txt"
    manifest.write_text("\n".join(["nowhere0.png", "nowhere1.png", *pages]) + "\n")  # a missing input per rank
    output = tmp_path / "out.jsonl"
    command = infer_command(ocr_checkpoint, "--image_file", str(manifest), "--output", str(output))
    run(launch_command(command + ["--max_error_rate", "0.1"], tmp_path / "logs"), check_exit=2)
    reason = (
        "error: Stopping: 2 of 10 inputs failed, more than --max_error_rate 0.1 allows; the results so far are kept "
        "(rerun with --resume to go on)."
    )
    logs = [open(tmp_path / "logs" / f"workerlog.{rank}", encoding="utf-8").read() for rank in (0, 1)]
    assert logs[0].strip().splitlines()[-1] == reason and reason in logs[1]  # each rank saw the run's 2 failures
    assert not any("FatalError" in log or "Traceback" in log for log in logs)
    report = json.load(open(str(output) + ".report.json"))
    assert report["total"]["inputs"] == 10 and report["total"]["failed"] == 2
    assert report["total"]["done"] <= 2  # each rank stops once it sees the other's failure, a page later at most
    kept = results(output)
    assert [r["image"] for r in kept] == [page for page in pages if page in {r["image"] for r in kept}]
    assert all(r["text"] == archive["texts"][r["image"]] for r in kept)
    assert [r["error"] for r in results(str(output) + ".errors.jsonl")] == [
        f"{tmp_path}/nowhere{index}.png: no such file." for index in (0, 1)
    ]

    run(command + ["--resume"], check_exit=2)  # with one process, no budget: the rest is read
    assert results(output) == [{"image": page, "text": archive["texts"][page]} for page in pages]
    assert json.load(open(str(output) + ".report.json"))["total"]["skipped"] == len(kept)


def test_a_kept_run_whose_inputs_are_all_missing_writes_its_errors_and_report(tmp_path):
    """The model path does not exist: a run over missing inputs alone records them without loading a model."""
    missing = [str(tmp_path / name) for name in ("a.png", "b.png")]
    output = tmp_path / "out.jsonl"
    command = [sys.executable, INFER, "--model_name_or_path", str(tmp_path / "no_model"), "--image_file", *missing]
    result = run(command + ["--output", str(output)], check_exit=2)
    lines = result.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("error:")] == [
        f"error: {path}: no such file." for path in missing
    ]
    assert lines[-1].startswith("Read 0 of 2 inputs (0 pages) in ") and lines[-1].endswith(" 2 failed.")
    assert results(str(output) + ".errors.jsonl") == [
        {"image": path, "error": f"{path}: no such file."} for path in missing
    ]
    report = json.load(open(str(output) + ".report.json"))
    assert [report["total"][name] for name in ("inputs", "done", "failed")] == [2, 0, 2]
    assert output.read_text() == ""


def test_a_manifest_that_lists_nothing_is_one_sentence(tmp_path):
    manifest = tmp_path / "pages.txt"
    manifest.write_text("# to be filled\n")
    command = [sys.executable, INFER, "--model_name_or_path", str(tmp_path / "no_model"), "--image_file", str(manifest)]
    assert run(command, check_exit=2).stderr.strip() == f"error: {manifest}: the manifest lists no paths."


def test_two_nodes_on_localhost(ocr_checkpoint, archive, tmp_path):
    output = tmp_path / "out.jsonl"
    command = infer_command(ocr_checkpoint, "--image_file", archive["root"], "--recursive", "--output", str(output))
    master = f"127.0.0.1:{free_port()}"
    nodes = [
        subprocess.Popen(
            launch_command(command, tmp_path / f"node{node}", nproc=1, nodes=("--nnodes", "2", "--master", master)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=REPO,
            env=ENV,
        )
        for node in range(2)
    ]
    codes = sorted(node.wait(timeout=600) for node in nodes)
    assert codes == [0, 2]  # rank 0 reports the broken file; the other rank's node ends cleanly
    assert_reference_texts(output, archive)
    report = json.load(open(str(output) + ".report.json"))
    assert len(report["ranks"]) == 2 and report["total"]["done"] == NUM_PAGES
