"""Checkpoints and the resume policy of synthesizer training: save and restore a checkpoint, refuse a
resume that would not equal an uninterrupted run, and the pipeline's automatic choice (auto_resume)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from components.io import atomic_path, move_aside
from components.synthesis.config import SynthesisError, SynthesizerConfig
from components.synthesis.store import ModelPaths, read_json
from data_catalog import Dataset

log = logging.getLogger(__name__)


def save_checkpoint(paths: ModelPaths, step: int, net: torch.nn.Module, ema: torch.nn.Module,
                    opt: torch.optim.Optimizer, gens: dict[str, torch.Generator], ema_updates: int,
                    config_sha: str, keep: int, prior: torch.Tensor | None = None) -> None:
    """Checkpoint (torch.save, plain types and tensors only, so weights_only loading works) + ema.pt.
    The prior, when the model has one, is in both (so the weights digest covers it)."""
    ema_state = {k: v.detach().cpu().contiguous() for k, v in ema.state_dict().items()}
    extra = {} if prior is None else {"prior": prior.detach().cpu().contiguous()}
    ck = {
        "format": 1, "step": int(step), "config_sha256": config_sha, "ema_updates": int(ema_updates),
        "model": {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()},
        "ema": ema_state,
        "optimizer": opt.state_dict(),
        "rng": {k: g.get_state() for k, g in gens.items()},
        **extra,
    }
    with atomic_path(paths.checkpoint(step), suffix=".pt") as tmp:
        torch.save(ck, tmp)
    with atomic_path(paths.ema, suffix=".pt") as tmp:
        torch.save({"format": 1, "step": int(step), "config_sha256": config_sha, "ema": ema_state, **extra}, tmp)
    for _, old in paths.list_checkpoints()[:-keep]:
        old.unlink(missing_ok=True)


def load_checkpoint(path: Path, config_sha: str, net: torch.nn.Module, ema: torch.nn.Module,
                    opt: torch.optim.Optimizer, gens: dict[str, torch.Generator]) -> tuple[int, int, torch.Tensor | None]:
    """Restore the model, the EMA, the optimizer and the RNG states from checkpoint ``path``, which must
    carry config digest ``config_sha``; returns (step, EMA updates, the saved prior or None)."""
    ck = torch.load(path, map_location="cpu", weights_only=True)
    if ck.get("config_sha256") != config_sha:
        raise SynthesisError(f"checkpoint {path} belongs to another config; cannot resume")
    net.load_state_dict(ck["model"])
    ema.load_state_dict(ck["ema"])
    opt.load_state_dict(ck["optimizer"])
    for k, g in gens.items():
        g.set_state(ck["rng"][k])
    return int(ck["step"]), int(ck["ema_updates"]), ck.get("prior")


def extends_exactly(old: SynthesizerConfig, new: SynthesizerConfig) -> bool:
    """Whether continuing a run started for ``old.train.steps`` up to ``new.train.steps`` trains exactly
    as an uninterrupted ``new`` run: the same total, or a learning-rate schedule that does not depend
    on the total (a cosine decay does: its curve is stretched by a new total)."""
    return old.train.steps == new.train.steps or new.train.lr_schedule == "constant"


def check_resumable(paths: ModelPaths, cfg: SynthesizerConfig, ds: Dataset) -> None:
    """Refuse ``resume=True`` when continuing would not equal an uninterrupted run of ``cfg`` on ``ds``."""
    if not paths.config.is_file():
        return
    card = read_json(paths.config)
    old = SynthesizerConfig.model_validate(card["config"])
    if old.digest(ignore_steps=True) != cfg.digest(ignore_steps=True):
        a, b = old.model_dump(mode="json"), cfg.model_dump(mode="json")
        diffs = [f"{sec}.{k}: {a[sec][k]!r} -> {b[sec][k]!r}" for sec in a if isinstance(a[sec], dict)
                 for k in a[sec] if a[sec][k] != b[sec].get(k) and (sec, k) != ("train", "steps")]
        diffs += [f"{k}: {a[k]!r} -> {b[k]!r}" for k in a if not isinstance(a[k], dict) and a[k] != b[k]]
        raise SynthesisError(f"cannot resume model in {paths.root}: its config differs ({'; '.join(diffs)}); "
                             f"use the same profile (only --steps may change) or another --name")
    if not extends_exactly(old, cfg):
        raise SynthesisError(f"cannot resume model in {paths.root} to --steps {cfg.train.steps}: it was started for "
                             f"{old.train.steps} steps with a {cfg.train.lr_schedule} learning-rate schedule, which a new "
                             f"total would change, so the run would not equal an uninterrupted one; resume with --steps "
                             f"{old.train.steps}, or train a new model (another --name)")
    if card.get("dataset") != ds.name:
        raise SynthesisError(f"cannot resume model in {paths.root}: it was trained on dataset {card.get('dataset')!r}, "
                             f"not {ds.name!r}")
    if card.get("dataset_manifest_sha256") != ds.manifest_digest:
        log.warning("dataset %s changed since this model started training; resuming on the current cases", ds.name)


def auto_resume(paths: ModelPaths, cfg: SynthesizerConfig, ds: Dataset) -> bool:
    """The pipeline's choice: continue a model of this config and these training cases from its last
    checkpoint (a killed run loses at most ``checkpoint_every`` steps); a model trained with another
    config, on other cases, past ``steps``, or started for another total under a schedule that the total
    shapes (:func:`extends_exactly`) is moved aside to ``<name>.replaced-<UTC time>`` (never deleted)
    and a new one starts, so the model depends on the config, never on the workspace's history."""
    existing = paths.list_checkpoints()
    if not existing and not paths.config.is_file():
        return False
    want = cfg.digest(ignore_steps=True)
    try:
        card = read_json(paths.config) if paths.config.is_file() else {}
        old = SynthesizerConfig.model_validate(card["config"]) if card.get("config") else None
        same = (old is not None and card.get("dataset") == ds.name
                and card.get("dataset_manifest_sha256") == ds.manifest_digest
                and old.digest(ignore_steps=True) == want and extends_exactly(old, cfg)
                and (not existing or existing[-1][0] <= cfg.train.steps))
        if same and existing:  # the checkpoint itself must carry this config (code changes can move digests)
            same = torch.load(existing[-1][1], map_location="cpu", weights_only=True).get("config_sha256") == want
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:  # unreadable or outdated: not ours
        log.info("model %s: cannot compare its config (%s: %s)", paths.root.name, type(err).__name__, err)
        same = False
    if same:
        return True
    aside = move_aside(paths.root)
    log.warning("model %s was trained with another config, step schedule or on other cases: moved to %s, "
                "training a new one", paths.root.name, aside)
    return False
