"""A trained ldm model on disk: ``<workspace>/models/<name>/``.

```
config.json               the card: resolved LdmConfig, dataset, train cases, label scheme, scale factor,
                          perceptual loss on/off, seeds, device, the state of each stage
stats.json                normalisation window (samples -> intensities) + quality reference
autoencoder.pt            the finished autoencoder stage: weights, step, scale_factor
diffusion.pt              the finished (or last checkpointed) diffusion stage: U-Net weights, step, scale_factor
checkpoints/              autoencoder_XXXXXXX.pt, diffusion_XXXXXXX.pt: weights, optimisers, RNG states
train_log_<stage>.csv     the loss curves
prepared/                 cached prepared training cases (shared code with ddpm)
```
Everything is read back with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from components.io import move_aside as _move_aside
from components.io import sha256_file
from components.ldm.config import LdmConfig, LdmError
from data_catalog import LabelScheme, load_label_scheme

if TYPE_CHECKING:
    import torch

Stage = Literal["autoencoder", "diffusion"]
CHECKPOINT_RE = re.compile(r"^(autoencoder|diffusion)_(\d+)\.pt$")


@dataclass(frozen=True)
class LdmPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def stats(self) -> Path:
        return self.root / "stats.json"

    @property
    def autoencoder(self) -> Path:
        return self.root / "autoencoder.pt"

    @property
    def diffusion(self) -> Path:
        return self.root / "diffusion.pt"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def cache(self) -> Path:
        return self.root / "prepared"

    @property
    def montage(self) -> Path:
        return self.root / "montage.png"

    def log(self, stage: Stage) -> Path:
        return self.root / f"train_log_{stage}.csv"

    def checkpoint(self, stage: Stage, step: int) -> Path:
        return self.checkpoints / f"{stage}_{step:07d}.pt"

    def list_checkpoints(self, stage: Stage) -> list[tuple[int, Path]]:
        if not self.checkpoints.is_dir():
            return []
        found = [(int(m.group(2)), p) for p in self.checkpoints.iterdir()
                 if (m := CHECKPOINT_RE.match(p.name)) and m.group(1) == stage]
        return sorted(found)


def ldm_paths(workspace: str | Path, name: str) -> LdmPaths:
    if not name or "/" in name or name.startswith("."):
        raise LdmError(f"invalid model name {name!r}: use letters, digits, '-' and '_'")
    return LdmPaths(Path(workspace) / "models" / name)


def move_aside(paths: LdmPaths) -> Path:
    """Set the model folder aside as ``<name>.replaced-<UTC time>`` (components.io.move_aside)."""
    return _move_aside(paths.root)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def require_trained(paths: LdmPaths, name: str) -> dict[str, Any]:
    """The card of a model whose two stages are both finished (LdmError naming what is missing otherwise)."""
    if not paths.config.is_file():
        known = sorted(p.name for p in paths.root.parent.iterdir()) if paths.root.parent.is_dir() else []
        raise LdmError(f"no model {name!r}: expected {paths.config}; models in this workspace: {', '.join(known) or 'none'}")
    card = read_json(paths.config)
    if card.get("backend") != "ldm":
        raise LdmError(f"model {name!r} in {paths.root} was trained by backend {card.get('backend', 'ddpm')!r}, not ldm")
    missing = [p.name for p in (paths.autoencoder, paths.diffusion, paths.stats) if not p.is_file()]
    if missing or card.get("stages", {}).get("diffusion", {}).get("done") is not True:
        raise LdmError(f"model {name!r} is not trained to the end (missing {', '.join(missing) or 'the finished diffusion stage'} "
                       f"in {paths.root}); train it, or resume the interrupted run")
    return card


def weights_digest(workspace: str | Path, name: str) -> str:
    """sha256 over both weight files; refuses a model whose training has not finished."""
    paths = ldm_paths(workspace, name)
    require_trained(paths, name)
    return hashlib.sha256((sha256_file(paths.autoencoder) + sha256_file(paths.diffusion)).encode()).hexdigest()


@dataclass
class TrainedLdm:
    name: str
    paths: LdmPaths
    config: LdmConfig
    card: dict[str, Any]
    stats: dict[str, Any]
    scheme: LabelScheme
    n_condition: int
    autoencoder: torch.nn.Module  # eval mode, on ``device``
    unet: torch.nn.Module         # eval mode, on ``device``
    scale_factor: float           # the diffusion runs on z * scale_factor; samples decode as z / scale_factor
    step: int                     # diffusion steps trained
    digest: str
    device: torch.device


def load_trained_ldm(workspace: str | Path, name: str, device: str = "auto") -> TrainedLdm:
    import torch

    from components.devices import resolve_device
    from components.ldm.networks import build_autoencoder, build_unet

    paths = ldm_paths(workspace, name)
    card = require_trained(paths, name)
    cfg = LdmConfig.model_validate(card["config"])
    ae_blob = torch.load(paths.autoencoder, map_location="cpu", weights_only=True)
    df_blob = torch.load(paths.diffusion, map_location="cpu", weights_only=True)
    for blob, stage, path in ((ae_blob, "autoencoder", paths.autoencoder), (df_blob, "diffusion", paths.diffusion)):
        if blob.get("config_sha256") != cfg.stage_digest(stage):
            raise LdmError(f"model {name!r}: {path} was trained with other {stage} settings than {paths.config}; retrain it")
    scale = float(df_blob["scale_factor"])
    if abs(scale - float(ae_blob["scale_factor"])) > 1e-6 * abs(scale):
        raise LdmError(f"model {name!r}: {paths.diffusion} holds scale factor {scale} but {paths.autoencoder} "
                       f"{float(ae_blob['scale_factor'])}; the diffusion stage was trained on another autoencoder, retrain it")
    dev = resolve_device(device, "ldm synthesizer")
    n_cond = int(card["n_condition"])
    ae = build_autoencoder(cfg)
    ae.load_state_dict(ae_blob["autoencoder"])
    unet = build_unet(cfg, n_cond)
    unet.load_state_dict(df_blob["unet"])
    return TrainedLdm(
        name=name, paths=paths, config=cfg, card=card, stats=read_json(paths.stats),
        scheme=load_label_scheme(card["label_scheme"]), n_condition=n_cond, autoencoder=ae.to(dev).eval(),
        unet=unet.to(dev).eval(), scale_factor=scale, step=int(df_blob["step"]),
        digest=weights_digest(workspace, name), device=dev)
