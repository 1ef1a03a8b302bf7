"""Post-train GOT-OCR2.0 (stage 2: everything; stage 3: --freeze_vision_tower True).

    python tools/train.py --config configs/stage2.yaml [--key value ...]
    python tools/train.py --config configs/stage2.yaml --freeze_vision_tower True --learning_rate 1e-5

Any field of the YAML file (ModelArguments, DataArguments, paddlenlp TrainingArguments) can be overridden with
`--key value`. Multi-process: `sh run_train.sh` (paddle.distributed.launch).
"""

from paddle_got.process import tune_process

tune_process()  # before Paddle loads (paddle_got/process.py)

import sys

from paddle_got.cli import plain_paddlenlp_logs, run_cli
from paddle_got.training.arguments import parse_training_arguments
from paddle_got.training.run import train


def main():
    plain_paddlenlp_logs()
    train(*parse_training_arguments(sys.argv[1:]))


if __name__ == "__main__":
    run_cli(main)
