"""The package logger, `paddle_got`. The library only logs to it (with a NullHandler, so that an application that
embeds paddle_got decides where its records go); the command-line tools call `log_to_stderr`."""

import logging
import os
import sys

LOGGER_NAME = "paddle_got"

logger = logging.getLogger(LOGGER_NAME)
logger.addHandler(logging.NullHandler())


def log_to_stderr() -> None:
    """For entry points: `[paddle_got] LEVEL message` lines on stderr, at INFO on rank 0 of a launch and at WARNING
    on the other ranks (once, however often called)."""
    if any(getattr(handler, "paddle_got_stderr", False) for handler in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(name)s] %(levelname)s %(message)s"))
    handler.paddle_got_stderr = True
    logger.addHandler(handler)
    rank = int(os.environ.get("PADDLE_TRAINER_ID", os.environ.get("RANK", "0")))
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.propagate = False  # the tools' records are shown once, whatever the root logger does
