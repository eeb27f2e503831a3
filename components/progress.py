"""Progress of long loops: a bar on a terminal, log lines everywhere else.

tqdm switches itself off when its output is not a terminal (SLURM logs, Prefect workers, CI), so a
job of hours would say nothing. This tqdm keeps counting there and logs its meter (count, rate,
time left) at a steady cadence instead of drawing it.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from tqdm.auto import tqdm as _tqdm

log = logging.getLogger(__name__)
LOG_EVERY_S = 30.0  # seconds between log lines when no terminal is attached (GLIOSYNTH_PROGRESS_SECONDS overrides)


def _log_every() -> float:
    try:
        return float(os.environ.get("GLIOSYNTH_PROGRESS_SECONDS", LOG_EVERY_S))
    except ValueError:
        return LOG_EVERY_S


class tqdm(_tqdm):  # noqa: N801 - a drop-in for tqdm.auto.tqdm
    """tqdm.auto.tqdm with ``disable=None`` meaning: a bar on a terminal, log lines otherwise."""

    def __init__(self, *args: Any, log_every: float | None = None, **kwargs: Any) -> None:
        self._log_lines = False
        stream = kwargs.get("file") or sys.stderr
        if kwargs.get("disable", False) is None and not _isatty(stream):
            kwargs["disable"] = False
            kwargs["file"] = open(os.devnull, "w")  # noqa: SIM115 - closed in close()
            kwargs.setdefault("mininterval", 1.0)
            self._log_lines = True
        self._every = _log_every() if log_every is None else log_every
        self._last_log = time.monotonic()
        self._logged_n: float | None = None
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None, **kwargs: Any) -> bool | None:
        if not self._log_lines:
            return super().display(msg, pos, **kwargs)
        now = time.monotonic()
        if now - self._last_log >= self._every:
            self._last_log = now
            self._logged_n = self.n
            log.info("%s", self.format_meter(**self.format_dict))
        return None

    def close(self) -> None:
        if getattr(self, "_log_lines", False) and not getattr(self, "disable", True):
            if self._logged_n != self.n:  # the final count, once
                log.info("%s", self.format_meter(**self.format_dict))
            self._log_lines = False
            devnull = self.fp
            super().close()
            devnull.close()
            return
        super().close()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
