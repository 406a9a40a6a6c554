"""The one base for every error a person is shown: the message is a sentence that says what to change.

Code that shows errors (the UI, the CLI) catches `LabError`; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class LabError(Exception):
    """A user-facing error whose message says what to change."""


class SpecError(LabError, ValueError):
    """A setting the user gave is not valid."""


class HaystackError(LabError, ValueError):
    """A haystack, task or probe setting that cannot be built."""


class ModelError(LabError, RuntimeError):
    """A model that cannot be loaded or run as asked (not found, too big, out of memory)."""


class StorageError(LabError, RuntimeError):
    """The run log cannot be read or written."""
