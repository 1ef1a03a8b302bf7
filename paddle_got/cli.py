"""What every command-line entry point shares: one-sentence errors and exit code 2 instead of tracebacks, and an
argument parser that shows defaults, takes no abbreviations and reports a bad argument in one line."""

import argparse
import sys
from typing import Callable, Optional

from .constants import DTYPES
from .errors import GOTError
from .hub import DEFAULT_MODEL, MODEL_SOURCES
from .logger import log_to_stderr

EXIT_BAD_INPUT = 2


def run_cli(main: Callable[[], None]) -> None:
    """Run `main()` with the package's logs on stderr; a GOTError or OSError becomes `error: <message>` on stderr
    and exit code 2."""
    log_to_stderr()
    try:
        main()
    except (GOTError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        print("error: interrupted.", file=sys.stderr)
        sys.exit(130)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and each option's default in its help (when it has a real one)."""

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS) or "%(default)" in (action.help or ""):
            return action.help
        return f"{action.help} (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the tools' habits: `error: <sentence>` and exit code 2 (no usage dump), exact option names."""

    def __init__(self, description: str):
        super().__init__(description=description, formatter_class=_HelpFormatter, allow_abbrev=False)

    def error(self, message: str):
        print(f"error: {message[0].upper() + message[1:]} (see --help).", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_model_arguments(parser: argparse.ArgumentParser, help: str, default: Optional[str] = DEFAULT_MODEL) -> None:
    """--model_name_or_path (`help`, `default`) and --model_source, as every tool that loads or fetches GOT takes
    them."""
    parser.add_argument("--model_name_or_path", default=default, help=help)
    parser.add_argument(
        "--model_source",
        metavar="{" + ",".join(MODEL_SOURCES) + "}",
        help="where a hub id is fetched from (default: $PADDLE_GOT_MODEL_SOURCE, else huggingface)",
    )


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """--dtype and --num_threads, as every tool that runs the model takes them."""
    parser.add_argument(
        "--dtype",
        default="auto",
        metavar="{" + ",".join(("auto",) + DTYPES) + "}",
        help="auto: bfloat16/float16 on GPU, float32 on CPU; bfloat16 on a CPU with AMX or AVX512-BF16 runs the "
        "encoder on oneDNN's bfloat16 kernels",
    )
    parser.add_argument("--num_threads", type=positive_int, default=None, help="CPU threads (None: all cores)")


def plain_paddlenlp_logs() -> None:
    """paddlenlp's log lines as plain `[paddlenlp] LEVEL message` at INFO: no colour codes in log files, and no
    DEBUG dump of every training argument (for tools that train; call after paddlenlp is imported)."""
    import logging

    from paddlenlp.utils.log import logger as paddlenlp_logger

    paddlenlp_logger.set_level("INFO")
    for handler in paddlenlp_logger.logger.handlers:
        handler.setFormatter(logging.Formatter("[paddlenlp] %(levelname)s %(message)s"))


def share(text: str) -> float:
    """A fraction between 0 and 1 (argparse type), e.g. an error budget."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a share between 0 and 1, got {text!r}")
    return value
