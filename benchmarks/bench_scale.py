"""Large runs: pages/s of one process against two (paddle.distributed.launch), and the cost of resuming a finished run.

    python benchmarks/bench_scale.py [--pages 256] [--max_new_tokens 128] [--batch_size 4]

Renders `--pages` text pages (paddle_got.data.synth), writes a small GOT (configs/tiny_got with random weights, so
every page runs to `--max_new_tokens`), then reads the directory with `tools/infer.py --output x.jsonl` as one
process with one thread, as two launched processes with one thread each, and once more with `--resume` over the
finished output. Prints the CPU, how much two processes gain on this machine for plain CPU work, each run's wall
time and pages/s (the run report's, which leaves out start-up and model loading, and end to end) and the ratios.
Logs go to stderr, the table to stdout.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INFER = os.path.join(REPO, "tools", "infer.py")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_serve import cpu_description  # noqa: E402


def write_small_model(directory: str) -> None:
    """configs/tiny_got with Paddle's random initialisers, and its tokenizer."""
    from paddle_got import GOTConfig, GOTQwenForCausalLM

    source = os.path.join(REPO, "configs", "tiny_got")
    model = GOTQwenForCausalLM(GOTConfig.from_pretrained(source))
    model.eval()
    model.save_pretrained(directory)
    shutil.copy(os.path.join(source, "qwen.tiktoken"), directory)


def timed_run(command, env) -> float:
    """Run `command` to its end (exit 0 expected); its wall time in seconds."""
    started = time.perf_counter()
    result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return time.perf_counter() - started


SPIN = (
    "import time\nstart = time.perf_counter()\ntotal = 0\nfor i in range(20_000_000):\n    total += i\n"
    "print(time.perf_counter() - start)"
)


def machine_scaling() -> float:
    """How much more CPU work two processes get done than one on this machine (a fixed Python loop alone, then two
    copies at once): 2.0 on two real cores, near 1.0 when the two vCPUs share one core."""
    alone = float(subprocess.run([sys.executable, "-c", SPIN], capture_output=True, text=True).stdout)
    pair = [subprocess.Popen([sys.executable, "-c", SPIN], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    together = max(float(process.communicate()[0]) for process in pair)
    return 2 * alone / together


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=256)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=4)
    args = parser.parse_args()
    print(f"CPU: {cpu_description()}", flush=True)
    scaling = machine_scaling()
    from paddle_got.data.synth import write_dataset

    scratch = tempfile.mkdtemp(prefix="bench_scale-")
    print(f"Rendering {args.pages} pages and writing the model in {scratch} ...", file=sys.stderr, flush=True)
    write_dataset(os.path.join(scratch, "data"), num_samples=args.pages, seed=0)
    pages = os.path.join(scratch, "data", "images")
    model = os.path.join(scratch, "model")
    write_small_model(model)
    env = {**os.environ, "GLOG_minloglevel": "2"}

    def infer(output, *extra):
        return [
            sys.executable,
            INFER,
            "--model_name_or_path",
            model,
            "--image_file",
            pages,
            "--output",
            output,
            "--max_new_tokens",
            str(args.max_new_tokens),
            "--batch_size",
            str(args.batch_size),
            *extra,
        ]

    def launched(command):
        launcher = [sys.executable, "-m", "paddle.distributed.launch", "--log_level", "WARNING"]
        return [*launcher, "--nproc_per_node", "2", "--log_dir", os.path.join(scratch, "logs"), *command[1:]]

    runs = {}
    for name, command in (
        ("1 process", infer(os.path.join(scratch, "one.jsonl"), "--num_threads", "1")),
        ("2 processes", launched(infer(os.path.join(scratch, "two.jsonl")))),
        ("resume, finished", infer(os.path.join(scratch, "two.jsonl"), "--resume")),
    ):
        print(f"{name} ...", file=sys.stderr, flush=True)
        wall = timed_run(command, env)
        output = command[command.index("--output") + 1]
        report = json.load(open(output + ".report.json"))["total"]
        runs[name] = {
            "wall_s": wall,
            "pages_per_s_run": report["pages_per_s"],
            "pages_end_to_end": report["pages"] / wall,
            "read": report["done"],
            "kept": report["skipped"],
        }
    one, two = runs["1 process"], runs["2 processes"]
    with open(os.path.join(scratch, "one.jsonl")) as a, open(os.path.join(scratch, "two.jsonl")) as b:
        same = a.read() == b.read()

    print(
        f"\n{args.pages} pages, max_new_tokens {args.max_new_tokens}, batch size {args.batch_size}, one thread per "
        f"process; 2-process output identical to 1-process: {same}\n"
    )
    print("| run | pages read | pages kept | wall time (s) | pages/s (reading) | pages/s (end to end) |")
    print("|---|---|---|---|---|---|")
    for name, run in runs.items():
        print(
            f"| {name} | {run['read']} | {run['kept']} | {run['wall_s']:.1f} | {run['pages_per_s_run']:.2f} | "
            f"{run['pages_end_to_end']:.2f} |"
        )
    print(
        f"\n2 processes / 1 process: {two['pages_per_s_run'] / one['pages_per_s_run']:.2f}x reading, "
        f"{one['wall_s'] / two['wall_s']:.2f}x end to end (this machine runs {scaling:.2f}x the CPU work with two "
        f"processes as with one); resuming the finished run: {runs['resume, finished']['wall_s']:.1f} s"
    )
    shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
