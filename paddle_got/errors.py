"""Exceptions whose message is one sentence meant for the user (tools print it and exit 2)."""


class GOTError(Exception):
    """Base class of every user-facing paddle_got error."""


class CheckpointError(GOTError):
    """A checkpoint directory cannot be read, recognised or matched to the model."""
