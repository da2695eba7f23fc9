"""The errors `tlutils` raises for bad input: each message is one line that names the fix."""

from __future__ import annotations


class TLUtilsError(Exception):
    """Base class of every error raised on purpose by `tlutils`."""


class ConfigError(TLUtilsError, ValueError):
    """An unknown profile, task, precision or other setting."""


class DataError(TLUtilsError, ValueError):
    """Data that is missing, malformed, or empty after filtering."""


class DataNotFoundError(DataError, FileNotFoundError):
    """Neither the local folder nor the Hugging Face hub could provide a split."""


class ModelNotAvailableError(TLUtilsError, OSError):
    """A model name that cannot be loaded (offline, misspelt, or not an encoder)."""


class NonFiniteLossError(TLUtilsError, FloatingPointError):
    """The training loss became NaN or infinite."""


class CheckpointMismatchError(TLUtilsError, ValueError):
    """A checkpoint written for another model or task."""
