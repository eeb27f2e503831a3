"""What every trained model's folder shares on disk, whichever backend wrote it (``components.ldm.store``,
``components.sbldm.store``, ``components.synthesis.store``, ``components.labelldm.store``).

```
config.json                     the card
checkpoints/<stage>_XXXXXXX.pt  resume points of a stage (the step in seven digits)
train_log_<stage>.csv           a stage's loss curve
<stage>.pt                      a finished stage's weights (ldm, sbldm, labelldm)
prepared/                       cached prepared training cases
```
Each backend's paths class adds its own files (``model_file``) and names its stages.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from components.io import move_aside as _move_aside
from components.io import sha256_file

F = TypeVar("F", bound="ModelFolder")


def model_file(name: str) -> property:
    """The property of the file (or folder) ``name`` inside the model folder."""
    return property(lambda self: self.root / name, doc=f"``<root>/{name}``")


@dataclass(frozen=True)
class ModelFolder:
    """The folder of one trained model; a backend's subclass names its own files and stages."""

    root: Path

    config = model_file("config.json")
    checkpoints = model_file("checkpoints")
    cache = model_file("prepared")

    @classmethod
    def named(cls: type[F], workspace: str | Path, name: str, error: type[Exception]) -> F:
        """``<workspace>/models/<name>/``; a name that is not one folder name is refused with ``error``."""
        if not name or "/" in name or name.startswith("."):
            raise error(f"invalid model name {name!r}: use letters, digits, '-' and '_'")
        return cls(Path(workspace) / "models" / name)

    def stage_file(self, stage: str) -> Path:
        return self.root / f"{stage}.pt"

    def stage_log(self, stage: str) -> Path:
        return self.root / f"train_log_{stage}.csv"

    def stage_checkpoint(self, stage: str, step: int) -> Path:
        return self.checkpoints / f"{stage}_{step:07d}.pt"

    def stage_checkpoints(self, stage: str) -> list[tuple[int, Path]]:
        """The checkpoints of ``stage`` as (step, path), oldest first."""
        if not self.checkpoints.is_dir():
            return []
        pattern = re.compile(rf"^{re.escape(stage)}_(\d+)\.pt$")
        return sorted((int(m.group(1)), p) for p in self.checkpoints.iterdir() if (m := pattern.match(p.name)))


@dataclass(frozen=True)
class OneStageCheckpoints(ModelFolder):
    """A model folder whose checkpoints all belong to one stage, ``checkpoint_stage``."""

    checkpoint_stage: ClassVar[str]

    def checkpoint(self, step: int) -> Path:
        return self.stage_checkpoint(self.checkpoint_stage, step)

    def list_checkpoints(self) -> list[tuple[int, Path]]:
        """The checkpoints of ``checkpoint_stage`` as (step, path), oldest first."""
        return self.stage_checkpoints(self.checkpoint_stage)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def move_aside(paths: ModelFolder) -> Path:
    """Set the model folder aside as ``<name>.replaced-<UTC time>`` (components.io.move_aside)."""
    return _move_aside(paths.root)


def files_digest(files: Iterable[Path]) -> str:
    """sha256 over the sha256 of each file, in order: the digest of a model's weights."""
    return hashlib.sha256("".join(sha256_file(p) for p in files).encode()).hexdigest()


def require_card(paths: ModelFolder, name: str, error: type[Exception]) -> None:
    """Refuse model ``name`` when its folder holds no card, naming the models the workspace holds."""
    if not paths.config.is_file():
        known = sorted(p.name for p in paths.root.parent.iterdir()) if paths.root.parent.is_dir() else []
        raise error(f"no model {name!r}: expected {paths.config}; models in this workspace: {', '.join(known) or 'none'}")


def require_finished(paths: ModelFolder, name: str, backend: str, files: tuple[Path, ...], error: type[Exception],
                     advice: str) -> dict[str, Any]:
    """The card of model ``name`` of ``backend`` whose diffusion stage is finished and whose ``files`` are all
    there; ``error`` naming what is missing (ending with ``advice``) otherwise."""
    require_card(paths, name, error)
    card = read_json(paths.config)
    if card.get("backend") != backend:
        raise error(f"model {name!r} in {paths.root} was trained by backend {card.get('backend', 'ddpm')!r}, not {backend}")
    missing = [p.name for p in files if not p.is_file()]
    if missing or card.get("stages", {}).get("diffusion", {}).get("done") is not True:
        raise error(f"model {name!r} is not trained to the end (missing "
                    f"{', '.join(missing) or 'the finished diffusion stage'} in {paths.root}); {advice}")
    return card


def load_latent_stages(paths: ModelFolder, name: str, stage_digest: Callable[[str], str], error: type[Exception],
                       first: str, first_what: str) -> tuple[dict[str, Any], dict[str, Any], float]:
    """The blobs of a latent model's ``<first>.pt`` (its autoencoder, called ``first_what`` in messages) and
    ``diffusion.pt``, read on the CPU, and the latent scale factor; ``error`` when a stage was trained with other
    settings than the card's config (``stage_digest``) or the two hold other scale factors."""
    import torch

    blobs = {s: torch.load(paths.stage_file(s), map_location="cpu", weights_only=True) for s in (first, "diffusion")}
    for stage, blob in blobs.items():
        if blob.get("config_sha256") != stage_digest(stage):
            raise error(f"model {name!r}: {paths.stage_file(stage)} was trained with other {stage} settings than "
                        f"{paths.config}; retrain it")
    scale, first_scale = float(blobs["diffusion"]["scale_factor"]), float(blobs[first]["scale_factor"])
    if abs(scale - first_scale) > 1e-6 * abs(scale):
        raise error(f"model {name!r}: {paths.stage_file('diffusion')} holds scale factor {scale} but "
                    f"{paths.stage_file(first)} {first_scale}; the diffusion stage was trained on another {first_what}, "
                    f"retrain it")
    return blobs[first], blobs["diffusion"], scale
