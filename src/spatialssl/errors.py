"""Errors that are the user's to fix: a key, a file, a folder, a run.

The ``spatialssl`` command reports these as one line (``spatialssl: error: ...``) and
exits with status 2; any other exception is a bug and keeps its traceback.
``config.ConfigError`` (a config key or value) is one of them. They subclass the built-in
exceptions a caller would expect (``ValueError``, ``FileNotFoundError``), so code that
catches those keeps working.
"""

from __future__ import annotations


class UserError(ValueError):
    """Input the library cannot use (a data set, a metrics file, a run); the message names it."""


class NotFound(UserError, FileNotFoundError):
    """A file or folder the user named (or a run needs) does not exist; the message names it."""
