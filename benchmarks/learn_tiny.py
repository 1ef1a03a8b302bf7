"""Does training really teach GOT to read? A tiny GOT trained from scratch on CPU, tested on unseen images.

    python benchmarks/learn_tiny.py [--minutes 13] [--train_samples 4000] [--heldout_samples 200]

Renders random-string training images (seed 0) and held-out images (seed 1, never trained on), trains
configs/tiny_synth.yaml within the time budget, then reads the held-out images greedily. Prints the loss curve and
the character error rate (sum of edit distances / sum of reference lengths) on stdout; logs go to stderr.
"""

import argparse
import json
import os
import sys
import time

from paddlenlp.trainer import TrainerCallback
from rapidfuzz.distance import Levenshtein

from paddle_got import GOT
from paddle_got.data.synth import write_dataset
from paddle_got.process import tune_process
from paddle_got.training.arguments import parse_training_arguments
from paddle_got.training.run import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "tiny_synth.yaml")
KINDS = ("chars",)


class TimeBudget(TrainerCallback):
    """Stops training once `seconds` have passed since training began."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.start = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.time()

    def on_step_end(self, args, state, control, **kwargs):
        if time.time() - self.start > self.seconds:
            control.should_training_stop = True


class LossRecorder(TrainerCallback):
    """Keeps `(step, loss)` of every logging step (paddlenlp's own log_history stays empty)."""

    def __init__(self):
        self.losses = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append((state.global_step, float(logs["loss"])))


def character_error_rate(predictions, references) -> float:
    """Sum of character edit distances over sum of reference lengths."""
    errors = sum(Levenshtein.distance(p, r) for p, r in zip(predictions, references))
    return errors / max(sum(len(r) for r in references), 1)


def main():
    tune_process()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", default=os.path.join(REPO, "output", "learn_tiny"))
    parser.add_argument("--minutes", type=float, default=13.0, help="training time budget")
    parser.add_argument("--train_samples", type=int, default=4000)
    parser.add_argument("--heldout_samples", type=int, default=200)
    args = parser.parse_args()

    started = time.time()
    train_meta = write_dataset(os.path.join(args.work_dir, "train"), args.train_samples, seed=0, kinds=KINDS)
    heldout_dir = os.path.join(args.work_dir, "heldout")
    write_dataset(heldout_dir, args.heldout_samples, seed=1, kinds=KINDS)
    output_dir = os.path.join(args.work_dir, "model")
    arguments = parse_training_arguments(
        [
            "--config",
            CONFIG,
            "--meta_path",
            train_meta,
            "--output_dir",
            output_dir,
            "--model_name_or_path",
            os.path.join(REPO, "configs", "tiny_got"),
            "--overwrite_output_dir",
            "True",
        ]
    )
    training_started = time.time()
    recorder = LossRecorder()
    trainer = train(*arguments, callbacks=[TimeBudget(args.minutes * 60), recorder])
    training_seconds = time.time() - training_started

    with open(os.path.join(heldout_dir, "annotations.json"), encoding="utf-8") as f:
        heldout = json.load(f)
    images = [os.path.join(heldout_dir, "images", record["image"]) for record in heldout]
    references = [record["conversations"][1]["value"] for record in heldout]
    reader = GOT.from_pretrained(output_dir, dtype="float32")
    # The model reads with the prompt it was trained with (SynthDoG's "<image>\nOCR:", kept in prompt_config.json).
    predictions = [r.text for r in reader.recognize(images, batch_size=16, max_new_tokens=32)]
    cer = character_error_rate(predictions, references)

    losses = recorder.losses
    print("step  loss")
    for step, loss in losses[:: max(len(losses) // 12, 1)] + losses[-1:]:
        print(f"{step:>4}  {loss:.4f}")
    exact = sum(p == r for p, r in zip(predictions, references))
    print(
        f"trained {trainer.state.global_step} steps x {arguments[2].per_device_train_batch_size} samples in "
        f"{training_seconds / 60:.1f} min; held-out images: {len(references)}, exact {exact / len(references):.1%}, "
        f"CER {cer:.2%}; total {(time.time() - started) / 60:.1f} min"
    )
    for prediction, reference in list(zip(predictions, references))[:5]:
        print(f"  {reference!r} -> {prediction!r}")
    sys.exit(0 if cer <= 0.10 else 1)


if __name__ == "__main__":
    main()
