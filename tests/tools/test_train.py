"""tools/train.py and run_train.sh end to end: resume after a kill, 2 processes = 1 process, bad data stops cleanly."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = os.path.join(REPO, "tools", "train.py")


def train_command(meta_path, output_dir, *extra):
    return [
        sys.executable,
        TRAIN,
        "--config",
        os.path.join(REPO, "configs", "tiny_cpu.yaml"),
        "--model_name_or_path",
        os.path.join(REPO, "configs", "tiny_got"),
        "--meta_path",
        meta_path,
        "--output_dir",
        str(output_dir),
        *extra,
    ]


def run_train(meta_path, output_dir, *extra, check_exit=0):
    result = subprocess.run(
        train_command(meta_path, output_dir, *extra), capture_output=True, text=True, timeout=600, cwd=REPO
    )
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    if check_exit is not None:
        assert result.returncode == check_exit, result.stderr[-3000:]
    return result


def run_train_sh_command(meta_path, output_dir, *extra):
    """`sh run_train.sh` on the tiny model, as a user types it (CONFIG and GPUS come from the environment)."""
    launcher = ["sh", os.path.join(REPO, "run_train.sh"), "--model_name_or_path", "configs/tiny_got"]
    return [*launcher, "--meta_path", meta_path, "--output_dir", str(output_dir), *extra]


def two_process_environment(**extra):
    """The environment for run_train.sh on CPU: two processes (GPUS=2) with the tiny config, then `extra`."""
    return {**os.environ, "GPUS": "2", "CONFIG": "configs/tiny_cpu.yaml", "PYTHON": sys.executable, **extra}


def read_with(model_dir, image, max_new_tokens):
    """tools/infer.py reading `image` with the model in `model_dir` (a finished run or a checkpoint)."""
    command = [sys.executable, os.path.join(REPO, "tools", "infer.py"), "--model_name_or_path", str(model_dir)]
    command += ["--image_file", image, "--max_new_tokens", str(max_new_tokens)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def weights(directory):
    return load_file(os.path.join(directory, "model.safetensors"))


def assert_same_weights(first, second, atol):
    first, second = weights(first), weights(second)
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_allclose(first[name], second[name], rtol=0, atol=atol, err_msg=name)


def test_output_is_a_checkpoint_infer_reads(synth_data, tmp_path):
    result = run_train(synth_data, tmp_path / "out")
    assert {"config.json", "model.safetensors", "qwen.tiktoken", "checkpoint-2", "checkpoint-4"} <= set(
        os.listdir(tmp_path / "out")
    )
    # Plain log lines: no colour codes, no DEBUG dump of every argument (it claimed `device : gpu` on CPU).
    assert "\x1b[" not in result.stderr and "DEBUG" not in result.stderr and "gpu" not in result.stderr
    assert len(result.stderr.splitlines()) < 60
    image = json.load(open(os.path.join(os.path.dirname(synth_data), "annotations.json")))[0]["image"]
    result = read_with(tmp_path / "out", os.path.join(os.path.dirname(synth_data), "images", image), 4)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("\n")


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_killed_and_resumed_run_ends_with_the_same_weights(lora, synth_data, tmp_path):
    steps = ["--max_steps", "16", "--save_steps", "2", "--lora", str(lora)]
    run_train(synth_data, tmp_path / "straight", *steps)
    process = subprocess.Popen(
        train_command(synth_data, tmp_path / "killed", *steps),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not os.path.isdir(tmp_path / "killed" / "checkpoint-2") and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.05)  # somewhere in the middle of the following 14 steps
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not os.path.exists(tmp_path / "killed" / "model.safetensors")  # it did not finish
    run_train(synth_data, tmp_path / "killed", *steps, "--resume_from_checkpoint", "true")
    assert_same_weights(tmp_path / "straight", tmp_path / "killed", atol=0)


def test_two_cpu_processes_equal_one_with_the_same_global_batch(synth_data, tmp_path):
    # The all-reduce sums gradients in another order (differences ~1e-7); Adam divides by sqrt(v), so for elements
    # with tiny gradients that becomes a share of the learning rate: weight differences scale with it.
    rate = ["--learning_rate", "1e-4"]
    run_train(synth_data, tmp_path / "one", "--per_device_train_batch_size", "2", *rate)
    result = subprocess.run(
        run_train_sh_command(synth_data, tmp_path / "two", "--per_device_train_batch_size", "1", *rate),
        capture_output=True,
        text=True,
        timeout=600,
        env=two_process_environment(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(f for f in os.listdir(tmp_path / "two" / "logs") if f.startswith("workerlog")) == [
        "workerlog.0",
        "workerlog.1",
    ]
    assert_same_weights(tmp_path / "one", tmp_path / "two", atol=1e-5)

    # Two "machines" on localhost: one launcher each (NNODES, MASTER, NODE_RANK), one process each, the same output
    # directory. NODE_RANK=1 on the first launcher: rank 0, the one that saves, runs under the second.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        master = f"127.0.0.1:{probe.getsockname()[1]}"
    nodes = [
        subprocess.Popen(
            run_train_sh_command(synth_data, tmp_path / "nodes", "--per_device_train_batch_size", "1", *rate),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=two_process_environment(
                GPUS="1", NNODES="2", MASTER=master, NODE_RANK=str(1 - node), LOG_DIR=str(tmp_path / f"logs{node}")
            ),
        )
        for node in range(2)
    ]
    for node in nodes:
        assert node.wait(timeout=600) == 0, node.stderr.read()[-3000:]
    assert_same_weights(tmp_path / "one", tmp_path / "nodes", atol=1e-5)
    logs = [open(tmp_path / f"logs{node}" / "workerlog.0", encoding="utf-8").read() for node in range(2)]
    assert ["Saved the model to" in log for log in logs] == [False, True]


def corrupt_copy(synth_data, tmp_path, edit):
    """A copy of the synthetic data's meta and annotations (images shared) with `edit` applied to the records."""
    folder = os.path.dirname(synth_data)
    records = json.load(open(os.path.join(folder, "annotations.json")))
    lines = edit(records)
    (tmp_path / "ann.jsonl").write_text("".join(lines))
    (tmp_path / "meta.json").write_text(
        json.dumps({"synth": {"images": os.path.join(folder, "images"), "annotations": "ann.jsonl"}})
    )
    return str(tmp_path / "meta.json")


def test_malformed_annotation_stops_before_training(synth_data, tmp_path):
    def break_line_3(records):
        lines = [json.dumps(r) + "\n" for r in records]
        lines[2] = lines[2][:-10] + "\n"
        return lines

    result = run_train(corrupt_copy(synth_data, tmp_path, break_line_3), tmp_path / "out", check_exit=2)
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'ann.jsonl'} line 3: malformed JSON")
    assert not (tmp_path / "out").exists()


def test_missing_images_are_skipped_or_fatal_with_strict(synth_data, tmp_path):
    def lose_two(records):
        records[0]["image"], records[5]["image"] = "gone_a.png", "gone_b.png"
        return [json.dumps(r) + "\n" for r in records]

    meta = corrupt_copy(synth_data, tmp_path, lose_two)
    result = run_train(meta, tmp_path / "out", "--max_steps", "1")
    assert "2 image files are missing, their samples are skipped: " in result.stderr
    assert "gone_a.png" in result.stderr and "Training data: 10 samples" in result.stderr
    strict = run_train(meta, tmp_path / "strict", "--strict", "True", check_exit=2)
    assert strict.stderr.strip().splitlines()[-1].startswith("error: 2 image files are missing: ")


def test_non_finite_loss_stops_without_saving(synth_data, tmp_path):
    result = run_train(
        synth_data,
        tmp_path / "out",
        "--learning_rate",
        "1e30",
        "--max_steps",
        "4",
        "--save_steps",
        "1",
        "--max_grad_norm",
        "0",
        check_exit=2,
    )
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: The training loss became ") and "before saving non-finite weights" in last
    for checkpoint in os.listdir(tmp_path / "out"):
        if checkpoint.startswith("checkpoint-"):
            for value in weights(tmp_path / "out" / checkpoint).values():
                assert np.isfinite(value).all()


@pytest.mark.parametrize("flag", ["--bf16", "--fp16"])
def test_half_precision_training_on_cpu_is_refused(flag, synth_data, tmp_path):
    result = run_train(synth_data, tmp_path / "out", flag, "True", check_exit=2)
    assert result.stderr.strip().splitlines()[-1] == (
        "error: bf16/fp16 training needs a GPU: Paddle's CPU kernels have no half-precision matmul."
    )


def test_fine_tuned_model_reads_with_its_training_prompt(tmp_path):
    """Memorise two SynthDoG-style samples (`<image>\\nOCR:`), then read them with no --query: the saved model
    reads with the prompt it learned (a different query makes this model misread)."""
    from paddle_got.data.synth import write_dataset

    meta = write_dataset(str(tmp_path / "data"), 2, seed=3, kinds=("chars",))
    records = json.load(open(tmp_path / "data" / "annotations.json"))
    run_train(meta, tmp_path / "out", "--max_steps", "80", "--save_steps", "40", "--learning_rate", "3e-3")
    for directory in ("out", "out/checkpoint-40", "out/checkpoint-80"):
        prompt = json.loads((tmp_path / directory / "prompt_config.json").read_text())
        assert prompt["query"] == "OCR:" and prompt["queries"] == {"OCR:": 2}, directory
    for record in records:
        image = str(tmp_path / "data" / "images" / record["image"])
        result = read_with(tmp_path / "out", image, 16)
        assert result.returncode == 0, result.stderr
        assert "Reading with the prompt this model was trained with: query 'OCR:'" in result.stderr
        assert result.stdout == record["conversations"][1]["value"] + "\n"
    evaluated = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "tools", "eval.py"),
            "--model_name_or_path",
            str(tmp_path / "out"),
            "--meta_path",
            meta,
            "--max_new_tokens",
            "16",
            "--report",
            str(tmp_path / "report.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads((tmp_path / "report.json").read_text())["acc"] == 1.0


@pytest.mark.parametrize(
    "extra, yaml_text, message",
    [
        (
            ["--foo", "1"],
            None,
            "error: Unknown training argument 'foo' on the command line (see tools/train.py --help).",
        ),
        (
            ["--max_step", "3"],
            None,
            "error: Unknown training argument 'max_step' on the command line: did you mean 'max_steps'?",
        ),
        ([], "max_stepz: 3\n", "error: Unknown training argument 'max_stepz' in {yaml}: did you mean 'max_steps'?"),
        (
            ["--freeze_vision_tower", "maybe"],
            None,
            "error: Bad value for 'freeze_vision_tower' on the command line: Truthy value expected: got maybe",
        ),
        ([], "max_steps: many\n", "error: Bad value for 'max_steps' in {yaml}: invalid int value: 'many'."),
    ],
    ids=["unknown", "misspelt", "misspelt_yaml", "bad_bool", "bad_int_yaml"],
)
def test_bad_training_argument_is_one_sentence(extra, yaml_text, message, synth_data, tmp_path):
    command = train_command(synth_data, tmp_path / "out", *extra)
    if yaml_text is not None:
        base = open(os.path.join(REPO, "configs", "tiny_cpu.yaml")).read()
        (tmp_path / "bad.yaml").write_text(base + yaml_text)
        command[command.index("--config") + 1] = str(tmp_path / "bad.yaml")
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message.format(yaml=tmp_path / "bad.yaml")), result.stderr
    assert not (tmp_path / "out").exists()


def test_rerun_into_a_finished_run_is_refused(synth_data, tmp_path):
    run_train(synth_data, tmp_path / "out", "--max_steps", "2")
    before = sorted(os.listdir(tmp_path / "out"))
    result = run_train(synth_data, tmp_path / "out", "--max_steps", "2", check_exit=2)
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'out'} already holds a training run (checkpoint-2): pass --resume_from_checkpoint true "
        "to continue it, --overwrite_output_dir True to train over it, or another --output_dir."
    )
    assert sorted(os.listdir(tmp_path / "out")) == before
    run_train(synth_data, tmp_path / "out", "--max_steps", "2", "--overwrite_output_dir", "True")


def test_run_train_sh_reports_a_failure_once(tmp_path):
    missing = str(tmp_path / "none" / "meta.json")
    result = subprocess.run(
        run_train_sh_command(missing, tmp_path / "out"),
        capture_output=True,
        text=True,
        timeout=600,
        env=two_process_environment(),
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert errors == [f"error: Cannot read the meta file {missing}: No such file or directory."], result.stderr
    assert "LAUNCH INFO" not in result.stderr and "ERROR LOG DETAIL" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"run_train.sh: training failed; the logs are in {tmp_path / 'out' / 'logs'}"
    )


def test_run_train_sh_on_several_machines_needs_the_master(tmp_path):
    result = subprocess.run(
        run_train_sh_command(str(tmp_path / "meta.json"), tmp_path / "out"),
        capture_output=True,
        text=True,
        timeout=60,
        env=two_process_environment(NNODES="2"),
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["run_train.sh: NNODES=2 needs MASTER=host:port (the first machine)"]


def worker_pids(output_dir):
    """The tools/train.py processes writing into `output_dir` (not their launcher), by PADDLE_TRAINER_ID."""
    pids = {}
    for entry in os.listdir("/proc"):
        try:
            command = open(f"/proc/{entry}/cmdline", "rb").read().split(b"\0")
            environment = open(f"/proc/{entry}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if (
            b"tools/train.py" in command
            and b"paddle.distributed.launch" not in command
            and str(output_dir).encode() in command
        ):
            rank = next((v.split(b"=")[1] for v in environment if v.startswith(b"PADDLE_TRAINER_ID=")), None)
            if rank is not None:
                pids[int(rank)] = int(entry)
    return pids


def test_run_train_sh_names_the_signal_that_killed_a_worker(synth_data, tmp_path):
    output = tmp_path / "out"
    process = subprocess.Popen(
        run_train_sh_command(synth_data, output, "--max_steps", "400", "--save_steps", "2"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=two_process_environment(),
    )
    deadline = time.time() + 300
    while not os.path.isdir(output / "checkpoint-2") and time.time() < deadline:
        time.sleep(0.05)
    os.kill(worker_pids(output)[0], signal.SIGABRT)
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == 256 - signal.SIGABRT
    lines = stderr.strip().splitlines()
    assert "run_train.sh: a training process was killed by signal 6 (SIGABRT); the last lines of each log:" in lines
    assert any(line.startswith("  workerlog.1: ") for line in lines)
    assert lines[-1] == f"run_train.sh: training failed; the logs are in {output / 'logs'}"
