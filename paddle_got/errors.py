"""Exceptions whose message is one sentence meant for the user (tools print it and exit 2)."""


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


def reason(err: BaseException) -> str:
    """An exception's message as the end of a sentence: first line only, trailing full stops dropped (the caller
    adds one)."""
    lines = str(err).strip().splitlines() or [type(err).__name__]
    return lines[0].rstrip(". ") or type(err).__name__
