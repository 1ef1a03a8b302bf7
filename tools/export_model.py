"""Export GOT-OCR2.0's vision encoder and projector as a Paddle Inference model (PaddleOCR's export_model).

    python tools/export_model.py --model_name_or_path GOT-OCR2_0-paddle [--output_dir GOT-OCR2_0-paddle/inference]

Writes inference.json (the program), inference.pdiparams (its weights) and inference.yml: the input, float32 tiles
[1, 3, image_size, image_size] as GOTProcessor makes them (already normalised), the output [1, tokens_per_tile,
hidden] float32, the source checkpoint and the Paddle version. The files appear only when all are complete. Run the
export with paddle_got.export.InferenceEncoder.
"""

from paddle_got.process import tune_process

tune_process()  # before Paddle loads (paddle_got/process.py)

from paddle_got.cli import ArgumentParser, run_cli
from paddle_got.device import set_cpu_threads
from paddle_got.export import export_checkpoint
from paddle_got.logger import logger


def parse_args():
    parser = ArgumentParser(__doc__)
    parser.add_argument("--model_name_or_path", required=True, help="checkpoint directory in any supported layout")
    parser.add_argument("--output_dir", help="where the export goes (default: <model_name_or_path>/inference)")
    return parser.parse_args()


def main():
    args = parse_args()
    set_cpu_threads()
    output_dir = export_checkpoint(args.model_name_or_path, args.output_dir)
    logger.info(f"Wrote {output_dir} (inference.json, inference.pdiparams, inference.yml).")


if __name__ == "__main__":
    run_cli(main)
