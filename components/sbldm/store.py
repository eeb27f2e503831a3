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

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.model_store import OneStageCheckpoints, files_digest, load_latent_stages, model_file, require_finished
from components.model_store import move_aside as move_aside  # components.sbldm.training imports these two from here
from components.model_store import read_json as read_json
from components.sbldm.config import SbldmConfig, SbldmError
from data_catalog import LabelScheme, load_label_scheme

if TYPE_CHECKING:
    import torch

    from components.sbldm.diffusion import FeatureConditionedUNet
    from components.sbldm.features import FeatureNorm
    from components.sbldm.vae import SliceVAE

BACKEND = "sbldm"


@dataclass(frozen=True)
class SbldmPaths(OneStageCheckpoints):
    checkpoint_stage = "diffusion"
    stats = model_file("stats.json")
    vae = model_file("vae.pt")
    diffusion = model_file("diffusion.pt")
    log = OneStageCheckpoints.stage_log


def sbldm_paths(workspace: str | Path, name: str) -> SbldmPaths:
    return SbldmPaths.named(workspace, name, SbldmError)


def require_trained(paths: SbldmPaths, name: str) -> dict[str, Any]:
    """The card of a model whose two stages are both finished (SbldmError naming what is missing otherwise)."""
    return require_finished(paths, name, BACKEND, (paths.vae, paths.diffusion, paths.stats), SbldmError,
                            "train it again")


def weights_digest(workspace: str | Path, name: str) -> str:
    """sha256 over both weight files; refuses a model whose training has not finished."""
    paths = sbldm_paths(workspace, name)
    require_trained(paths, name)
    return files_digest((paths.vae, paths.diffusion))


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
    from components.devices import resolve_device
    from components.sbldm.diffusion import build_unet
    from components.sbldm.features import FeatureNorm
    from components.sbldm.vae import build_vae

    paths = sbldm_paths(workspace, name)
    card = require_trained(paths, name)
    cfg = SbldmConfig.model_validate(card["config"])
    vae_blob, df_blob, _ = load_latent_stages(paths, name, cfg.stage_digest, SbldmError, first="vae", first_what="VAE")
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
