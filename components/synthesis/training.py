"""Training loop of the mask-conditioned diffusion model (Med-DDPM recipe on MONAI parts).

Each optimizer step: ``grad_accum`` micro-batches of (image, mask) drawn with paired flips, then the
objective of ``objective`` (Gaussian noise, timesteps, epsilon loss); Adam, linear warm-up, gradient
clipping, EMA of the weights. Checkpoints (``resume``) hold the model, the EMA, the optimizer, the
step and both RNG states, so ``resume=True`` continues with exactly the losses of an uninterrupted
run. The montage and the loss curve are drawn by ``figures``.
"""

from __future__ import annotations

import copy
import csv
import datetime as _dt
import io
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch

from components.io import remove_stale_temp, sha256_file, write_json_atomic, write_text_atomic
from components.progress import tqdm
from components.synthesis.config import SynthesisError, SynthesizerConfig
from components.synthesis.data import (
    HEAD,
    TrainingSet,
    condition_channels,
    draw_batch,
    healthy_mean_prior,
    n_condition_channels,
    prepare_training_set,
)
from components.synthesis.figures import plot_loss, training_montage
from components.synthesis.network import build_network, build_scheduler, count_parameters, place_network, resolve_device
from components.synthesis.objective import optimizer_step
from components.synthesis.quality import reference_statistics
from components.synthesis.resume import auto_resume, check_resumable, load_checkpoint, save_checkpoint
from components.synthesis.store import ModelPaths, model_paths, read_json
from data_catalog import MODALITIES, Dataset, code_version, open_dataset

log = logging.getLogger(__name__)

EXPERIMENT = "synthesizer"
LOG_FIELDS = ("step", "loss", "lr", "elapsed_s")


class Tracker(Protocol):
    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...


class NullTracker:
    run_id = None

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass


@dataclass
class TrainResult:
    name: str
    model_dir: Path
    steps: int
    start_step: int
    final_loss: float        # loss of the last step
    smoothed_loss: float     # mean loss of the last 10 % of steps (at least 1)
    seconds: float           # wall time of this call
    train_seconds: float     # wall time of all training steps, summed over resumed runs
    n_params: int
    device: str
    montage: Path | None
    run_id: str | None
    weights_sha256: str

    def line(self) -> str:
        what = "resumed" if self.start_step else "trained"
        return (f"{self.name}: {what} to step {self.steps} in {self.seconds:.1f} s ({self.n_params:,} parameters, "
                f"{self.device}); final loss {self.final_loss:.4f} (last-10% mean {self.smoothed_loss:.4f}) -> "
                f"{self.model_dir}")


# --------------------------------------------------------------------------- schedules, log, statistics
def learning_rate(train: Any, step: int) -> float:
    """Linear warm-up to ``lr``, then constant or a cosine decay to ``min_lr`` at the last step."""
    if train.warmup_steps and step <= train.warmup_steps:
        return train.lr * step / train.warmup_steps
    if train.lr_schedule == "constant":
        return train.lr
    span = max(1, train.steps - train.warmup_steps)
    frac = min(1.0, (step - train.warmup_steps) / span)
    return train.min_lr + 0.5 * (train.lr - train.min_lr) * (1.0 + math.cos(math.pi * frac))


def ema_decay_at(cfg_decay: float, n_updates: int) -> float:
    """EMA warm-up: min(decay, (1 + n) / (10 + n)), so an early EMA is not dominated by the random init."""
    return min(cfg_decay, (1.0 + n_updates) / (10.0 + n_updates))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, net: torch.nn.Module, decay: float) -> None:
    for pe, p in zip(ema.parameters(), net.parameters(), strict=True):
        pe.lerp_(p.detach(), 1.0 - decay)
    for be, b in zip(ema.buffers(), net.buffers(), strict=True):
        be.copy_(b)


def derive_seeds(seed: int) -> tuple[int, int]:
    """Independent seeds for the data stream (cases, flips) and the noise stream (noise, timesteps)."""
    a, b = np.random.SeedSequence(seed).spawn(2)
    return int(a.generate_state(1)[0]), int(b.generate_state(1)[0])


def read_log(path: Path, upto: int | None = None) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with open(path, encoding="utf-8", newline="") as fh:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(fh)]
    return [r for r in rows if upto is None or r["step"] <= upto]


def write_log(path: Path, rows: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOG_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({"step": int(r["step"]), "loss": repr(float(r["loss"])), "lr": repr(float(r["lr"])),
                    "elapsed_s": f"{r['elapsed_s']:.3f}"})
    write_text_atomic(path, buf.getvalue())


def training_statistics(ts: TrainingSet, cfg: SynthesizerConfig) -> dict[str, Any]:
    """What sampling needs to map samples back to intensities, plus the quality reference."""
    lo = np.array([i["lo"] for i in ts.infos])
    hi = np.array([i["hi"] for i in ts.infos])
    dtypes = [i.get("dtype", "float32") for i in ts.infos]
    return {
        "normalisation": {
            "method": "per-modality percentile window inside the head -> [-1, 1]; -1 outside the head",
            "percentiles": list(cfg.data.percentiles),
            # a sample is mapped back with the median window of the training cases
            "lo": {m: float(np.median(lo[:, c])) for c, m in enumerate(MODALITIES)},
            "hi": {m: float(np.median(hi[:, c])) for c, m in enumerate(MODALITIES)},
        },
        "quality_reference": reference_statistics([i["tissue"] for i in ts.infos]),
        "dtype": max(set(dtypes), key=dtypes.count),
        "n_cases": len(ts),
        "cases": list(ts.case_ids),
        "resampled_cases": [cid for cid, i in zip(ts.case_ids, ts.infos, strict=True) if i.get("resampled")],
        "lost_tumour_voxels": int(sum(i.get("lost_tumour_voxels", 0) for i in ts.infos)),
    }


# --------------------------------------------------------------------------- the loop
def train_synthesizer(
    workspace: str | Path,
    dataset: str,
    name: str,
    config: SynthesizerConfig,
    *,
    resume: bool | Literal["auto"] = False,
    steps: int | None = None,
    track: bool = True,
    progress: bool | None = None,
    run_params: dict[str, Any] | None = None,
) -> TrainResult:
    """Train (or resume) model ``name`` on the train split of ``dataset``; log to MLflow if ``track``
    (``run_params``, e.g. the backend's name, are logged on the run besides the config)."""
    cfg = config.with_steps(steps)
    ds = open_dataset(workspace, dataset)
    paths = model_paths(workspace, name)
    if resume == "auto":
        resume = auto_resume(paths, cfg, ds)
    if not track:
        return _train(ds, paths, name, cfg, resume, NullTracker(), progress)
    from components.tracking import start_run

    tags = {"stage": "synthesizer", "model": name, "dataset": dataset, "profile": cfg.profile, "resume": resume}
    with start_run(workspace, EXPERIMENT, run_name=f"train {name}", tags=tags) as run:
        if run_params:
            run.log_params(run_params)
        r = _train(ds, paths, name, cfg, resume, run, progress)
        run.log_metrics({"final_loss": r.final_loss, "smoothed_loss": r.smoothed_loss, "train_seconds": r.train_seconds,
                         "call_seconds": r.seconds}, step=r.steps)
        return r


def _train(ds: Dataset, paths: ModelPaths, name: str, cfg: SynthesizerConfig, resume: bool, tracker: Any,
           progress: bool | None) -> TrainResult:
    t_call = time.perf_counter()
    scheme = ds.label_scheme
    cases = ds.ok_cases("train")
    if cases.empty:
        raise SynthesisError(f"dataset {ds.name!r} has no ok cases in the train split (of {len(ds.manifest)} cases); "
                             f"the synthesizer trains on the train split only")
    existing = paths.list_checkpoints()
    config_sha = cfg.digest(ignore_steps=True)
    if existing and not resume:
        card = read_json(paths.config) if paths.config.is_file() else {}
        same = card.get("config_sha256") == cfg.digest() and card.get("dataset") == ds.name
        if not (same and existing[-1][0] >= cfg.train.steps):
            raise SynthesisError(f"model {name!r} already has checkpoints (last step {existing[-1][0]}) in {paths.root}: "
                                 f"pass --resume to continue it, or choose another --name")
        log.info("model %s is already trained to step %d with this config; nothing to do", name, existing[-1][0])
        return _summary(paths, name, cfg, existing[-1][0], existing[-1][0], t_call, None, getattr(tracker, "run_id", None))
    if resume:
        check_resumable(paths, cfg, ds)
        if existing and existing[-1][0] > cfg.train.steps:
            raise SynthesisError(f"model {name!r} is at step {existing[-1][0]}, beyond --steps {cfg.train.steps}")

    n_cond = n_condition_channels(scheme)
    paths.root.mkdir(parents=True, exist_ok=True)
    if remove_stale_temp(paths.root):
        log.info("model %s: removed temporary files of an interrupted run", name)
    card = {
        "name": name, "config": cfg.model_dump(mode="json"), "config_sha256": cfg.digest(), "dataset": ds.name,
        "dataset_manifest_sha256": ds.manifest_digest, "label_scheme": scheme.name, "modalities": list(MODALITIES),
        "n_condition": n_cond,
        "condition_channels": {"background": 0, "head": HEAD,
                               **{f"{k} (seg {v})": condition_channels(scheme)[v] for k, v in scheme.labels.items()}},
        "train_cases": cases["case_id"].tolist(), "code_version": code_version(),
        "updated": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    write_json_atomic(paths.config, card)

    ts = prepare_training_set(ds, cases, cfg.data, scheme, paths.cache, progress)
    write_json_atomic(paths.stats, training_statistics(ts, cfg))
    prior = torch.from_numpy(healthy_mean_prior(ts)) if cfg.diffusion.prior == "healthy_mean" else None

    device = resolve_device(cfg.train.device)
    net = place_network(build_network(cfg.network, n_cond, seed=cfg.seed, diffusion=cfg.diffusion), device)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.train.lr)
    inferer_scheduler = build_scheduler(cfg.diffusion, "ddpm")
    from monai.inferers import DiffusionInferer

    inferer = DiffusionInferer(inferer_scheduler)
    data_seed, noise_seed = derive_seeds(cfg.seed)
    gens = {"data": torch.Generator().manual_seed(data_seed), "noise": torch.Generator().manual_seed(noise_seed)}
    start, ema_updates = 0, 0
    if resume and existing:
        start, ema_updates, saved_prior = load_checkpoint(existing[-1][1], config_sha, net, ema, opt, gens)
        if prior is not None and saved_prior is not None:  # the prior is fixed when training starts
            prior = saved_prior
        log.info("resuming model %s from step %d (%s)", name, start, existing[-1][1].name)
    elif resume:
        log.info("model %s has no checkpoint yet: starting from step 0", name)
    rows = read_log(paths.log, upto=start) if start else []
    elapsed0 = rows[-1]["elapsed_s"] if rows else 0.0

    n_params = count_parameters(net)
    tracker.log_params({"config": cfg.model_dump(mode="json"), "dataset": ds.name, "n_params": n_params,
                        "n_train_cases": len(ts), "device": str(device), "start_step": start})
    B, accum = cfg.train.batch_size, cfg.train.grad_accum
    prior_np = None if prior is None else prior.numpy()
    net.train()
    every = max(1, cfg.train.steps // 20)
    t0 = time.perf_counter()
    bar = tqdm(range(start + 1, cfg.train.steps + 1), desc=f"train {name}", unit="step", initial=start,
               total=cfg.train.steps, disable=None if progress is None else not progress)
    for step in bar:
        lr = learning_rate(cfg.train, step)
        batches = (draw_batch(ts, B, cfg.data, gens["data"], prior_np) for _ in range(accum))
        losses = optimizer_step(net, opt, inferer, batches, cfg, gens["noise"], n_cond, lr)
        step_loss = sum(losses.tolist(), 0.0)  # one device sync per step
        if step % cfg.train.ema_every == 0:
            decay = 0.0 if step < cfg.train.ema_start else ema_decay_at(cfg.train.ema_decay, ema_updates)
            update_ema(ema, net, decay)
            ema_updates += int(step >= cfg.train.ema_start)
        rows.append({"step": step, "loss": step_loss, "lr": lr, "elapsed_s": elapsed0 + time.perf_counter() - t0})
        bar.set_postfix(loss=f"{step_loss:.4f}")
        if step % every == 0 or step == cfg.train.steps:  # progress for logs, where the bar is off
            recent = [r["loss"] for r in rows[-every:]]
            log.info("%s: step %d/%d, loss %.4f (mean of last %d), %.2f s/step", name, step, cfg.train.steps,
                     float(np.mean(recent)), len(recent), (time.perf_counter() - t0) / (step - start))
        tracker.log_metrics({"loss": step_loss, "lr": lr}, step=step)
        if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps:
            # The log first: a run killed between the two resumes from the previous checkpoint and
            # trims the log to it (read_log(upto=start)), so no logged step is ever lost.
            write_log(paths.log, rows)
            save_checkpoint(paths, step, net, ema, opt, gens, ema_updates, config_sha, cfg.train.keep_checkpoints, prior)
    bar.close()
    if hasattr(tracker, "flush"):
        tracker.flush()

    montage = None
    if cfg.train.steps > start or not paths.montage.is_file():
        montage = training_montage(ema, ts, cfg, scheme, n_cond, paths.montage, progress, prior)
        plot_loss(rows, paths.loss_plot, f"{name} ({cfg.profile}): {ds.name}, {len(ts)} train cases")
    for p in (paths.config, paths.stats, paths.log, paths.loss_plot, montage):
        if p is not None and Path(p).is_file():
            tracker.log_artifact(p)
    return _summary(paths, name, cfg, cfg.train.steps, start, t_call, montage, getattr(tracker, "run_id", None),
                    n_params=n_params, device=str(device))


def _summary(paths: ModelPaths, name: str, cfg: SynthesizerConfig, step: int, start: int, t_call: float,
             montage: Path | None, run_id: str | None, n_params: int | None = None, device: str = "") -> TrainResult:
    rows = read_log(paths.log, upto=step)
    losses = [r["loss"] for r in rows]
    tail = losses[-max(1, len(losses) // 10):] if losses else [float("nan")]
    if n_params is None:
        n_params = count_parameters(build_network(cfg.network, int(read_json(paths.config)["n_condition"]), cfg.seed,
                                                  cfg.diffusion))
    return TrainResult(
        name=name, model_dir=paths.root, steps=step, start_step=start,
        final_loss=losses[-1] if losses else float("nan"), smoothed_loss=float(np.mean(tail)),
        seconds=time.perf_counter() - t_call, train_seconds=rows[-1]["elapsed_s"] if rows else 0.0,
        n_params=n_params, device=device or cfg.train.device, montage=montage or (paths.montage if paths.montage.is_file() else None),
        run_id=run_id, weights_sha256=sha256_file(paths.ema) if paths.ema.is_file() else "",
    )
