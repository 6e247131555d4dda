"""Errors caused by what the user gave us (a folder, a name, a parameter).

The command line and the notebook print the message of a ``UserError`` as one sentence
and exit non-zero, without a traceback: the message must say what is wrong, where, and
what to do about it. Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user; the message is shown as-is, without a traceback."""


class DatasetError(UserError, ValueError):
    """A data root, category, image or mask that cannot be used."""


class ConfigError(UserError, ValueError):
    """An unknown model name, an unknown override, or a parameter out of range."""


class CheckpointError(UserError, ValueError):
    """A file that is not a checkpoint of this model and config."""


class TrainingError(UserError, RuntimeError):
    """A training run that cannot go on (e.g. the loss became NaN): names model, category, epoch."""
