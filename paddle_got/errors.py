"""Exceptions whose message is one sentence meant for the user (tools print it and exit 2)."""

from typing import Optional


class GOTError(Exception):
    """Base class of every user-facing paddle_got error."""


class BadInputError(GOTError):
    """An input file, box, colour or option combination that cannot be read as asked."""


class DataError(GOTError):
    """The training or evaluation data cannot be used as given (malformed meta file or annotation)."""


class CheckpointError(GOTError):
    """A checkpoint directory cannot be read, recognised or matched to the model."""


class ExportError(GOTError):
    """A Paddle Inference export cannot be written, read or run as asked (e.g. bfloat16 on a CPU without it)."""


class EngineFull(GOTError):
    """The engine's waiting queue is full: try again later."""


class RequestTooLarge(GOTError):
    """A request that can never fit the engine's cache budget."""


class RequestError(GOTError):
    """A request that cannot be served as sent: `status` is the HTTP status to answer with (4xx), `param` the
    request field at fault (or None)."""

    def __init__(self, message: str, status: int = 400, param: Optional[str] = None):
        super().__init__(message)
        self.status = status
        self.param = param


def reason(err: BaseException) -> str:
    """An exception's message as the end of a sentence: first line only, trailing full stops dropped (the caller
    adds one)."""
    lines = str(err).strip().splitlines() or [type(err).__name__]
    return lines[0].rstrip(". ") or type(err).__name__
