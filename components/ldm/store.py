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

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from components.ldm.config import LdmConfig, LdmError
from components.model_store import ModelFolder, files_digest, load_latent_stages, model_file, require_finished
from components.model_store import move_aside as move_aside  # components.ldm.training imports these two from here
from components.model_store import read_json as read_json
from data_catalog import LabelScheme, load_label_scheme

if TYPE_CHECKING:
    import torch

Stage = Literal["autoencoder", "diffusion"]


@dataclass(frozen=True)
class LdmPaths(ModelFolder):
    stats = model_file("stats.json")
    autoencoder = model_file("autoencoder.pt")
    diffusion = model_file("diffusion.pt")
    montage = model_file("montage.png")
    log = ModelFolder.stage_log
    checkpoint = ModelFolder.stage_checkpoint
    list_checkpoints = ModelFolder.stage_checkpoints


def ldm_paths(workspace: str | Path, name: str) -> LdmPaths:
    return LdmPaths.named(workspace, name, LdmError)


def require_trained(paths: LdmPaths, name: str) -> dict[str, Any]:
    """The card of a model whose two stages are both finished (LdmError naming what is missing otherwise)."""
    return require_finished(paths, name, "ldm", (paths.autoencoder, paths.diffusion, paths.stats), LdmError,
                            "train it, or resume the interrupted run")


def weights_digest(workspace: str | Path, name: str) -> str:
    """sha256 over both weight files; refuses a model whose training has not finished."""
    paths = ldm_paths(workspace, name)
    require_trained(paths, name)
    return files_digest((paths.autoencoder, paths.diffusion))


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
    from components.devices import resolve_device
    from components.ldm.networks import build_autoencoder, build_unet

    paths = ldm_paths(workspace, name)
    card = require_trained(paths, name)
    cfg = LdmConfig.model_validate(card["config"])
    ae_blob, df_blob, scale = load_latent_stages(paths, name, cfg.stage_digest, LdmError, first="autoencoder",
                                                 first_what="autoencoder")
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
