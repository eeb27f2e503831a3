"""A trained sbldm model on disk: ``<workspace>/models/<name>/``.

```
config.json          the card: resolved SbldmConfig, dataset, train cases, label scheme, feature columns and
                     their normalisation constants, latent scale, seeds, device, state of each stage
stats.json           intensity window (samples -> intensities) + quality reference
vae.pt               the slice VAE (its state dict holds the latent scale factor), step, config digest
diffusion.pt         the feature-conditioned U-Net (EMA weights when on), feature normalisation, step, digest
train_log_<stage>.csv  loss curves
checkpoints/         diffusion_<step>.pt mid-stage checkpoints (U-Net, EMA, optimiser, generators) a killed run resumes from
size_sweep.png       generated cases for a sweep of requested tumour volumes at one centre
prepared/            cached prepared training cases (shared code with ddpm)
```
Everything is read back with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.io import move_aside as _move_aside
from components.io import sha256_file
from components.sbldm.config import SbldmConfig, SbldmError
from data_catalog import LabelScheme, load_label_scheme

if TYPE_CHECKING:
    import torch

    from components.sbldm.diffusion import FeatureConditionedUNet
    from components.sbldm.features import FeatureNorm
    from components.sbldm.vae import SliceVAE

BACKEND = "sbldm"


@dataclass(frozen=True)
class SbldmPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def stats(self) -> Path:
        return self.root / "stats.json"

    @property
    def vae(self) -> Path:
        return self.root / "vae.pt"

    @property
    def diffusion(self) -> Path:
        return self.root / "diffusion.pt"

    @property
    def cache(self) -> Path:
        return self.root / "prepared"

    def log(self, stage: str) -> Path:
        return self.root / f"train_log_{stage}.csv"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"diffusion_{step:07d}.pt"

    def list_checkpoints(self) -> list[tuple[int, Path]]:
        """The diffusion stage's checkpoints, oldest first."""
        if not self.checkpoints.is_dir():
            return []
        found = [(int(p.stem.split("_")[1]), p) for p in self.checkpoints.glob("diffusion_*.pt")
                 if p.stem.split("_")[1].isdigit()]
        return sorted(found)


def sbldm_paths(workspace: str | Path, name: str) -> SbldmPaths:
    if not name or "/" in name or name.startswith("."):
        raise SbldmError(f"invalid model name {name!r}: use letters, digits, '-' and '_'")
    return SbldmPaths(Path(workspace) / "models" / name)


def move_aside(paths: SbldmPaths) -> Path:
    """Set the model folder aside as ``<name>.replaced-<UTC time>`` (components.io.move_aside)."""
    return _move_aside(paths.root)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def require_trained(paths: SbldmPaths, name: str) -> dict[str, Any]:
    """The card of a model whose two stages are both finished (SbldmError naming what is missing otherwise)."""
    if not paths.config.is_file():
        known = sorted(p.name for p in paths.root.parent.iterdir()) if paths.root.parent.is_dir() else []
        raise SbldmError(f"no model {name!r}: expected {paths.config}; models in this workspace: {', '.join(known) or 'none'}")
    card = read_json(paths.config)
    if card.get("backend") != BACKEND:
        raise SbldmError(f"model {name!r} in {paths.root} was trained by backend {card.get('backend', 'ddpm')!r}, not sbldm")
    missing = [p.name for p in (paths.vae, paths.diffusion, paths.stats) if not p.is_file()]
    if missing or card.get("stages", {}).get("diffusion", {}).get("done") is not True:
        raise SbldmError(f"model {name!r} is not trained to the end (missing "
                         f"{', '.join(missing) or 'the finished diffusion stage'} in {paths.root}); train it again")
    return card


def weights_digest(workspace: str | Path, name: str) -> str:
    """sha256 over both weight files; refuses a model whose training has not finished."""
    paths = sbldm_paths(workspace, name)
    require_trained(paths, name)
    return hashlib.sha256((sha256_file(paths.vae) + sha256_file(paths.diffusion)).encode()).hexdigest()


@dataclass
class TrainedSbldm:
    name: str
    paths: SbldmPaths
    config: SbldmConfig
    card: dict[str, Any]
    stats: dict[str, Any]
    scheme: LabelScheme
    n_classes: int            # mask classes: background, head, one per tumour label
    vae: SliceVAE             # eval mode, on ``device``; vae.scale_factor is the stored latent scale
    unet: FeatureConditionedUNet
    norm: FeatureNorm         # the stored feature normalisation
    step: int
    digest: str
    device: torch.device


def load_trained_sbldm(workspace: str | Path, name: str, device: str = "auto") -> TrainedSbldm:
    import torch

    from components.devices import resolve_device
    from components.sbldm.diffusion import build_unet
    from components.sbldm.features import FeatureNorm
    from components.sbldm.vae import build_vae

    paths = sbldm_paths(workspace, name)
    card = require_trained(paths, name)
    cfg = SbldmConfig.model_validate(card["config"])
    vae_blob = torch.load(paths.vae, map_location="cpu", weights_only=True)
    df_blob = torch.load(paths.diffusion, map_location="cpu", weights_only=True)
    for blob, stage, path in ((vae_blob, "vae", paths.vae), (df_blob, "diffusion", paths.diffusion)):
        if blob.get("config_sha256") != cfg.stage_digest(stage):
            raise SbldmError(f"model {name!r}: {path} was trained with other {stage} settings than {paths.config}; retrain it")
    scale = float(df_blob["scale_factor"])
    if abs(scale - float(vae_blob["scale_factor"])) > 1e-6 * abs(scale):
        raise SbldmError(f"model {name!r}: {paths.diffusion} holds scale factor {scale} but {paths.vae} "
                         f"{float(vae_blob['scale_factor'])}; the diffusion stage was trained on another VAE, retrain it")
    n_classes = int(card["n_classes"])
    vae = build_vae(cfg.vae, n_classes)
    vae.load_state_dict(vae_blob["vae"])
    norm = FeatureNorm.from_dict(df_blob["feature_norm"])
    unet = build_unet(cfg.unet, cfg.vae.latent_channels, len(norm.columns))
    unet.load_state_dict(df_blob["unet"])
    dev = resolve_device(device if device != "auto" else cfg.device, "sbldm synthesizer")
    return TrainedSbldm(
        name=name, paths=paths, config=cfg, card=card, stats=read_json(paths.stats),
        scheme=load_label_scheme(card["label_scheme"]), n_classes=n_classes, vae=vae.to(dev).eval(),
        unet=unet.to(dev).eval(), norm=norm, step=int(df_blob["step"]), digest=weights_digest(workspace, name), device=dev)
