"""A trained label model on disk (one folder: the mask source's ``<workspace>/models/labelldm-<key>/``, or a
segmenter's ``<workspace>/ablations/<ablation>/<configuration>/ldmseg/``).

```
config.json               the card: resolved LabelLdmConfig, train cases, label scheme, classes, scale
                          factor, seeds, device, the state of each stage
autoencoder.pt            the finished autoencoder stage: weights, step, scale_factor, config_sha256
diffusion.pt              the finished latent diffusion stage: U-Net weights (EMA when on), step
controlnet.pt             the finished ControlNet stage (segmenter only)
checkpoints/<stage>_XXXXXXX.pt   weights, optimiser, generator states (resume points)
train_log_<stage>.csv     the loss curves
prepared/                 cached prepared cases
```
Everything is read back with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.labelldm.config import LabelLdmConfig, LabelLdmError, Stage
from components.model_store import ModelFolder, files_digest, read_json
from data_catalog import LabelScheme, load_label_scheme

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class LabelModelPaths(ModelFolder):
    card = ModelFolder.config
    stage = ModelFolder.stage_file
    log = ModelFolder.stage_log
    checkpoint = ModelFolder.stage_checkpoint
    list_checkpoints = ModelFolder.stage_checkpoints


def read_card(paths: LabelModelPaths) -> dict[str, Any]:
    return read_json(paths.card) if paths.card.is_file() else {}


def stage_done(paths: LabelModelPaths, card: dict[str, Any], stage: Stage, key: str | None = None) -> bool:
    """Whether the card says ``stage`` is finished (with ``key``: these settings and these cases) and its
    weight file is there."""
    st = card.get("stages", {}).get(stage, {})
    return st.get("done") is True and (key is None or st.get("key") == key) and paths.stage(stage).is_file()


def weights_digest(paths: LabelModelPaths, stages: tuple[Stage, ...]) -> str:
    return files_digest(paths.stage(s) for s in stages)


@dataclass
class LabelModel:
    """A trained label model in memory (eval mode, on ``device``)."""

    paths: LabelModelPaths
    config: LabelLdmConfig
    card: dict[str, Any]
    scheme: LabelScheme
    n_classes: int
    autoencoder: torch.nn.Module
    unet: torch.nn.Module
    controlnet: torch.nn.Module | None
    scale_factor: float        # the diffusion runs on z * scale_factor; samples decode as z / scale_factor
    digest: str
    device: torch.device


def load_label_model(root: str | Path, device: str | None = None, controlnet: bool = False,
                     gpu: str | None = None) -> LabelModel:
    """The label model of folder ``root`` (LabelLdmError naming what is missing when a stage is unfinished)."""
    import torch

    from components.labelldm.networks import build_autoencoder, build_controlnet, build_unet
    from components.labelldm.training import resolve_device
    from data_catalog import MODALITIES

    paths = LabelModelPaths(Path(root))
    card = read_card(paths)
    if card.get("backend") != "labelldm":
        raise LabelLdmError(f"no label model in {paths.root}: expected {paths.card} written by the labelldm training, "
                            f"found {'a card of backend ' + repr(card.get('backend')) if card else 'none'}")
    cfg = LabelLdmConfig.model_validate(card["config"])
    stages: tuple[Stage, ...] = ("autoencoder", "diffusion", "controlnet") if controlnet else ("autoencoder", "diffusion")
    missing = [s for s in stages if not stage_done(paths, card, s)]
    if missing:
        raise LabelLdmError(f"label model {paths.root} is not trained to the end (unfinished: {', '.join(missing)}); "
                            f"train it again with the same settings to resume")
    blobs = {s: torch.load(paths.stage(s), map_location="cpu", weights_only=True) for s in stages}
    stale = [s for s in stages if blobs[s].get("key") != card["stages"][s].get("key")]
    if stale:
        raise LabelLdmError(f"label model {paths.root}: {', '.join(paths.stage(s).name for s in stale)} were trained "
                            f"with other settings or cases than {paths.card} records; train it again")
    dev = resolve_device(device or cfg.device, gpu)
    scheme = load_label_scheme(card["label_scheme"])
    n_classes = int(card["n_classes"])
    ae = build_autoencoder(cfg, n_classes)
    ae.load_state_dict(blobs["autoencoder"]["autoencoder"])
    unet = build_unet(cfg)
    unet.load_state_dict(blobs["diffusion"]["unet"])
    cn = None
    if controlnet:
        cn = build_controlnet(cfg, unet, len(MODALITIES))
        cn.load_state_dict(blobs["controlnet"]["controlnet"])
        cn = cn.to(dev).eval()
    return LabelModel(paths=paths, config=cfg, card=card, scheme=scheme, n_classes=n_classes,
                      autoencoder=ae.to(dev).eval(), unet=unet.to(dev).eval(), controlnet=cn,
                      scale_factor=float(blobs["autoencoder"]["scale_factor"]), digest=weights_digest(paths, stages),
                      device=dev)
