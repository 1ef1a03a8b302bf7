"""Fetch GOT weights from a hub into a folder you can copy anywhere (the local cache is used when it has them).

    python tools/download_model.py --model_name_or_path stepfun-ai/GOT-OCR2_0 --local_dir GOT-OCR2_0
    python tools/download_model.py --model_source modelscope --model_name_or_path stepfun-ai/GOT-OCR2_0 --local_dir GOT
    python tools/download_model.py --model_source aistudio --model_name_or_path stepfun-ai/GOT-OCR2_0 --local_dir GOT

Prints the folder on stdout. Read it with `tools/infer.py --model_name_or_path <folder>`.
"""

from paddle_got.process import tune_process

tune_process()  # before Paddle loads (paddle_got/process.py)

import os
import shutil

from paddle_got.cli import ArgumentParser, add_model_arguments, run_cli
from paddle_got.errors import GOTError
from paddle_got.hub import model_source, resolve_model_path


def parse_args():
    parser = ArgumentParser(__doc__)
    add_model_arguments(parser, "hub id")
    parser.add_argument("--local_dir", required=True, help="folder to copy the checkpoint into (must not exist)")
    return parser.parse_args()


def main():
    args = parse_args()
    source = model_source(args.model_source)
    if os.path.exists(args.local_dir):
        raise GOTError(f"--local_dir {args.local_dir} already exists: give a new folder.")
    cached = resolve_model_path(args.model_name_or_path, source)
    staging = args.local_dir.rstrip("/") + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(cached, staging, symlinks=False)
    os.replace(staging, args.local_dir)
    print(os.path.abspath(args.local_dir))


if __name__ == "__main__":
    run_cli(main)
