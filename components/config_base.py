"""The one base of every settings model: frozen (hashable, never edited in place) and strict about
field names (a misspelt setting is refused, not ignored); the profile folders, and the checks and the
--steps replacement several backends' settings share."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict


class FrozenModel(BaseModel):
    """A pydantic model that is frozen and forbids unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def check_levels(name: str, channels: tuple[int, ...], norm_num_groups: int,
                 attention_levels: tuple[bool, ...] | None = None) -> None:
    """Refuse a network config ``name`` (autoencoder, unet, ...) whose ``attention_levels`` do not give one entry
    per level of ``channels``, or whose channels GroupNorm cannot split into ``norm_num_groups`` groups."""
    if attention_levels is not None and len(attention_levels) != len(channels):
        raise ValueError(f"{name}.attention_levels needs one entry per level ({len(channels)}), "
                         f"got {len(attention_levels)}")
    bad = [c for c in channels if c % norm_num_groups]
    if bad:
        raise ValueError(f"{name} channels {bad} are not multiples of norm_num_groups={norm_num_groups}")


def check_latent_grid(grid: Sequence[int], unet_channels: tuple[int, ...], how: str) -> None:
    """Refuse a latent ``grid`` (``how`` it comes from data.shape, for the message) whose sides the latent U-Net's
    ``len(unet_channels) - 1`` halvings do not divide."""
    g = 2 ** (len(unet_channels) - 1)
    bad = [s for s in grid if s % g]
    if bad:
        raise ValueError(f"latent grid {grid} ({how}): with {len(unet_channels)} U-Net levels every side must be a "
                         f"multiple of {g}; {bad} are not")


M = TypeVar("M", bound=BaseModel)


def with_stage_steps(config: M, stage: str, steps: int | None) -> M:
    """``config`` with ``steps`` in place of the steps of its stage settings ``stage`` (``diffusion_train``,
    ``train``), or ``config`` itself when ``steps`` is None: what the --steps option does."""
    if steps is None:
        return config
    return config.model_copy(update={stage: getattr(config, stage).model_copy(update={"steps": int(steps)})})


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
