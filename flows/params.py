"""The base of every flow's params: the workspace it reads and writes, frozen and strict. The field
descriptions are the command line's help (flows/flags.py)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from components.config_base import FrozenModel


class StageParams(FrozenModel):
    workspace: str = Field("workspace", description="workspace folder holding datasets, models and runs")

    @property
    def root(self) -> str:
        """The workspace as an absolute path (what tasks and their cache keys see)."""
        return str(Path(self.workspace).resolve())
