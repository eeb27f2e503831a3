"""A trained model on disk: ``<workspace>/models/<name>/``.

```
config.json        the resolved SynthesizerConfig + dataset, label scheme, conditioning channels
stats.json         normalisation window (to map samples back to intensities) + quality reference
ema.pt             EMA weights used for sampling (written at every checkpoint), its step, the prior
checkpoints/       step_XXXXXXX.pt: model, EMA, optimizer, step, RNG states (torch.save)
train_log.csv      step, loss, lr, elapsed_s
montage.png        real vs synthetic for training masks, loss.png the loss curve
prepared/          cached prepared training cases
```
Everything is read back with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.io import sha256_file
from components.model_store import OneStageCheckpoints, model_file, read_json, require_card
from components.synthesis.config import SynthesisError, SynthesizerConfig
from data_catalog import LabelScheme, load_label_scheme

if TYPE_CHECKING:  # torch loads only when a model does: the command line checks a model name without it
    import torch


class ModelNotTrainedError(SynthesisError):
    """The model folder holds no trained weights (sampling a random network is refused)."""


@dataclass(frozen=True)
class ModelPaths(OneStageCheckpoints):
    checkpoint_stage = "step"  # checkpoints/step_XXXXXXX.pt
    stats = model_file("stats.json")
    ema = model_file("ema.pt")
    log = model_file("train_log.csv")
    montage = model_file("montage.png")
    loss_plot = model_file("loss.png")


def model_paths(workspace: str | Path, name: str) -> ModelPaths:
    return ModelPaths.named(workspace, name, SynthesisError)


def weights_digest(workspace: str | Path, name: str) -> str:
    """sha256 of the EMA weights file; refuses a model with no trained checkpoint."""
    paths = model_paths(workspace, name)
    _require_trained(paths, name)
    return sha256_file(paths.ema)


def require_trained(workspace: str | Path, name: str) -> None:
    """Model ``name`` exists and has a trained checkpoint (SynthesisError / ModelNotTrainedError otherwise)."""
    _require_trained(model_paths(workspace, name), name)


def _require_trained(paths: ModelPaths, name: str) -> None:
    require_card(paths, name, SynthesisError)
    if not paths.ema.is_file() or not paths.list_checkpoints():
        raise ModelNotTrainedError(
            f"model {name!r} has no trained checkpoint (expected {paths.ema} and a file in {paths.checkpoints}); "
            f"refusing to sample an untrained network. Train it first: python -m flows train-synthesizer "
            f"--name {name} --dataset ... (or --resume an interrupted run)")


@dataclass
class TrainedModel:
    name: str
    paths: ModelPaths
    config: SynthesizerConfig
    card: dict[str, Any]
    stats: dict[str, Any]
    scheme: LabelScheme
    n_condition: int
    network: torch.nn.Module  # EMA weights, eval mode, on ``device``
    prior: torch.Tensor | None  # (4, X, Y, Z) on the model grid for a model trained with one, else None
    step: int
    digest: str
    device: torch.device


def load_trained_model(workspace: str | Path, name: str, device: str = "auto") -> TrainedModel:
    paths = model_paths(workspace, name)
    _require_trained(paths, name)
    card = read_json(paths.config)
    cfg = SynthesizerConfig.model_validate(card["config"])
    if not paths.stats.is_file():
        raise ModelNotTrainedError(f"model {name!r}: {paths.stats} is missing (normalisation statistics); retrain it")
    stats = read_json(paths.stats)
    import torch

    from components.synthesis.network import build_network, place_network, resolve_device

    blob = torch.load(paths.ema, map_location="cpu", weights_only=True)
    step = int(blob.get("step", 0))
    if step < 1:
        raise ModelNotTrainedError(f"model {name!r}: {paths.ema} holds step {step}; refusing an untrained network")
    if blob.get("config_sha256") != cfg.digest(ignore_steps=True):
        raise SynthesisError(f"model {name!r}: {paths.ema} was trained with another config than {paths.config}")
    dev = resolve_device(device)
    scheme = load_label_scheme(card["label_scheme"])
    n_cond = int(card["n_condition"])
    net = build_network(cfg.network, n_cond, seed=cfg.seed, diffusion=cfg.diffusion)
    net.load_state_dict(blob["ema"])
    prior = blob.get("prior")
    if (prior is None) != (cfg.diffusion.prior == "none"):
        raise SynthesisError(f"model {name!r}: its config has prior {cfg.diffusion.prior!r} but {paths.ema} "
                             f"{'holds no' if prior is None else 'holds a'} prior; retrain it")
    net = place_network(net, dev).eval()
    return TrainedModel(name=name, paths=paths, config=cfg, card=card, stats=stats, scheme=scheme, n_condition=n_cond,
                        network=net, prior=prior, step=step, digest=sha256_file(paths.ema), device=dev)
