"""The one base of every settings model: frozen (hashable, never edited in place) and strict about
field names (a misspelt setting is refused, not ignored)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Generic, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict


class FrozenModel(BaseModel):
    """A pydantic model that is frozen and forbids unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


M = TypeVar("M", bound=BaseModel)


class ProfileDir(Generic[M]):
    """The YAML profiles of one backend's settings model in one folder (``configs/<kind>/``): a profile
    is a name in that folder or the path of a YAML file. Checked without importing torch."""

    def __init__(self, folder: Path, model: type[M], error: type[Exception], kind: str) -> None:
        self.folder, self.model, self.error, self.kind = folder, model, error, kind

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.folder.glob("*.yaml"))

    def path(self, profile: str | Path) -> Path | None:
        """The YAML file of ``profile``, or None when there is none."""
        path = Path(profile)
        if path.suffix in (".yaml", ".yml") and path.is_file():
            return path
        named = self.folder / f"{profile}.yaml"
        return named if str(profile) and named.is_file() else None

    def check(self, profile: str | Path) -> Path:
        """The YAML file of ``profile``; an unknown one is refused in one sentence."""
        path = self.path(profile)
        if path is None:
            raise self.error(f"unknown {self.kind} profile {str(profile)!r}: expected one of {', '.join(self.names())} "
                             f"(configs/{self.kind}/) or the path of a YAML file")
        return path

    def load(self, profile: str | Path) -> M:
        """The settings of ``profile`` (its file's stem recorded as ``profile`` unless the file names one)."""
        path = self.check(profile)
        with open(path, encoding="utf-8") as fh:
            data: dict[str, Any] = yaml.safe_load(fh) or {}
        data.setdefault("profile", path.stem)
        try:
            return self.model.model_validate(data)
        except ValueError as err:
            raise self.error(f"{self.kind} profile {path}: {err}") from err
