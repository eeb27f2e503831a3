"""The project's error base: input a user can fix, reported by the command line as one sentence.

Every error class the pipeline raises for bad input (a config value, a file, a dataset name, a
case) derives from :class:`GliosynthError`; the command line prints its message, without a
traceback, and exits with status 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class GliosynthError(Exception):
    """Bad input or state a user can fix; the message is one sentence naming what, where and why."""


class InputError(GliosynthError, ValueError):
    """A value, file or case that does not meet its contract (also a ValueError for older callers)."""
