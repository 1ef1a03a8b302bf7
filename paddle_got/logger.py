"""A rank-aware logger writing to stderr: only rank 0 logs at INFO, other ranks at WARNING."""

import logging
import os
import sys

_LOGGER_NAME = "paddle_got"


def get_logger() -> logging.Logger:
    """Return the package logger, configured once (stderr, `[paddle_got] LEVEL message`)."""
    logger = logging.getLogger(_LOGGER_NAME)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(name)s] %(levelname)s %(message)s"))
        logger.addHandler(handler)
        rank = int(os.environ.get("PADDLE_TRAINER_ID", os.environ.get("RANK", "0")))
        logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
        logger.propagate = False
    return logger


logger = get_logger()
