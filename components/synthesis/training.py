"""Training loop of the mask-conditioned diffusion model (Med-DDPM recipe on MONAI parts).

Each optimizer step: ``grad_accum`` micro-batches of (image, mask) drawn with paired flips, Gaussian
noise and uniform timesteps; the noisy image is concatenated with the one-hot mask and the
network predicts the noise (epsilon objective, Ho et al. 2020 eq. (14)), with an L1 or MSE loss;
Adam, linear warm-up, gradient clipping, EMA of the weights. Checkpoints hold the model, the EMA,
the optimizer, the step and both RNG states, so ``resume=True`` continues with exactly the losses
of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import datetime as _dt
import io
import logging
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from components.io import atomic_path, remove_stale_temp, sha256_file, write_json_atomic, write_text_atomic
from components.progress import tqdm
from components.synthesis.config import SynthesisError, SynthesizerConfig
from components.synthesis.data import (
    HEAD,
    TrainingSet,
    condition_channels,
    draw_batch,
    healthy_mean_prior,
    n_condition_channels,
    one_hot,
    prepare_training_set,
)
from components.synthesis.network import build_network, build_scheduler, count_parameters, place_network, resolve_device
from components.synthesis.quality import reference_statistics
from components.synthesis.sampling import make_generator, sample_images
from components.synthesis.store import ModelPaths, model_paths, read_json
from data_catalog import MODALITIES, Dataset, LabelScheme, code_version, open_dataset

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


# --------------------------------------------------------------------------- pieces
def loss_function(kind: str):
    return F.l1_loss if kind == "l1" else F.mse_loss


def draw_timesteps(n: int, alphas_cumprod: torch.Tensor, diffusion: Any, generator: torch.Generator) -> torch.Tensor:
    """Training timesteps (n,) long: uniform, or EDM's lognormal over sigma (Karras et al. 2022, sec. 5)
    mapped to the nearest discrete timestep of the schedule.

    The draws come from ``generator`` (on the CPU) whatever the device of ``alphas_cumprod``: MONAI's
    ``add_noise`` moves its scheduler's ``alphas_cumprod`` to the data's device after the first batch,
    so the lognormal draw is moved there before the search; the timesteps are returned on that device."""
    T = alphas_cumprod.shape[0]
    if diffusion.timestep_sampling == "uniform":
        return torch.randint(0, T, (n,), generator=generator).to(alphas_cumprod.device)
    a = alphas_cumprod.detach().double()
    log_sigma = 0.5 * torch.log((1.0 - a) / a)  # increasing in t
    draw = diffusion.p_mean + diffusion.p_std * torch.randn(n, generator=generator, dtype=torch.float64)
    draw = draw.to(log_sigma.device)
    idx = torch.searchsorted(log_sigma, draw).clamp(1, T - 1)
    nearer_low = (draw - log_sigma[idx - 1]) < (log_sigma[idx] - draw)
    return torch.where(nearer_low, idx - 1, idx).long()


def timestep_weights(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, diffusion: Any) -> torch.Tensor:
    """Per-sample weights on the epsilon loss (B,). SNR_t = a_t / (1 - a_t).

    min_snr: min(SNR_t, gamma) / SNR_t (Hang et al. 2023, eq. 8, epsilon form); edm: 1 / c_out(t)^2,
    i.e. the inner network's loss on its unit-variance target (Karras et al. 2022); none: ones.
    Returned on the device of ``alphas_cumprod``.
    """
    if diffusion.loss_weighting == "none":
        return torch.ones(timesteps.shape, dtype=torch.float32, device=alphas_cumprod.device)
    a = alphas_cumprod.detach()[timesteps.to(alphas_cumprod.device)].double()  # on the schedule's device
    if diffusion.loss_weighting == "min_snr":
        snr = a / (1.0 - a)
        return (torch.clamp(snr, max=diffusion.min_snr_gamma) / snr).float()
    from components.synthesis.network import edm_coefficients

    return (1.0 / edm_coefficients(a, diffusion.sigma_data)[2] ** 2).float()


def training_loss(net: torch.nn.Module, inferer: Any, image: torch.Tensor, labels: torch.Tensor, noise: torch.Tensor,
                  timesteps: torch.Tensor, n_condition: int, loss: str, amp: bool = False,
                  weights: torch.Tensor | None = None, prior: torch.Tensor | None = None) -> torch.Tensor:
    """Epsilon objective (Ho et al. 2020, eq. 14): x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps, then the
    loss between eps and eps_theta([x_t, one-hot mask(, prior)], t), optionally weighted per sample.
    image (B, 4, X, Y, Z), labels (B, X, Y, Z), prior (B, 4, X, Y, Z) or None, timesteps and weights (B,)."""
    cond = one_hot(labels, n_condition)
    if prior is not None:
        cond = torch.cat([cond, prior.to(cond.dtype)], dim=1)
    # no autocast context at all without amp: torch refuses autocast(enabled=False) on some device types
    ctx = torch.autocast(device_type=image.device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    with ctx:
        pred = inferer(inputs=image, diffusion_model=net, noise=noise, timesteps=timesteps, condition=cond, mode="concat")
    per_sample = loss_function(loss)(pred.float(), noise, reduction="none").flatten(1).mean(1)
    if weights is not None:
        per_sample = per_sample * weights.to(per_sample.device)
    return per_sample.mean()


def optimizer_step(net: torch.nn.Module, opt: torch.optim.Optimizer, inferer: Any,
                   batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]], cfg: SynthesizerConfig,
                   noise_generator: torch.Generator, n_condition: int, lr: float) -> torch.Tensor:
    """One optimizer step of the training loop, on the network's device (bfloat16 autocast on a GPU with
    ``train.amp``): for each micro-batch (image (B, 4, X, Y, Z), labels (B, X, Y, Z), prior (B, 4, X, Y, Z)
    or None; any device) the noise and then the timesteps are drawn from ``noise_generator`` (CPU), the
    loss / ``train.grad_accum`` is back-propagated; then gradient clipping and the step at learning rate
    ``lr``. Returns the micro-batch losses (already divided by grad_accum), detached, on that device.

    The timestep schedule is read from ``inferer.scheduler`` at each micro-batch, on whatever device
    MONAI's ``add_noise`` left it (the data's, after the first batch): :func:`draw_timesteps` and
    :func:`timestep_weights` work on that device, so a CUDA run does not mix devices.
    """
    device = next(net.parameters()).device
    use_amp = cfg.train.amp and device.type == "cuda"
    accum = cfg.train.grad_accum
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    losses = []
    for img, lab, pri in batches:
        noise = torch.randn(img.shape, generator=noise_generator)
        schedule = inferer.scheduler.alphas_cumprod
        t = draw_timesteps(img.shape[0], schedule, cfg.diffusion, noise_generator)
        w = timestep_weights(schedule, t, cfg.diffusion)
        loss = training_loss(net, inferer, img.to(device), lab.to(device), noise.to(device), t.to(device), n_condition,
                             cfg.diffusion.loss, use_amp, weights=w, prior=None if pri is None else pri.to(device)) / accum
        loss.backward()
        losses.append(loss.detach())
    if not losses:
        raise SynthesisError("optimizer_step needs at least one micro-batch")
    if cfg.train.grad_clip:
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.train.grad_clip)
    opt.step()
    return torch.stack(losses)


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


def labels_to_seg(labels: np.ndarray, scheme: LabelScheme) -> np.ndarray:
    """Conditioning map back to seg values (for montage overlays)."""
    seg = np.zeros(labels.shape, dtype=np.uint8)
    for value, channel in condition_channels(scheme).items():
        seg[labels == channel] = value
    return seg


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


def _plot_loss(rows: list[dict[str, float]], out: Path, title: str) -> Path | None:
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([r["step"] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    k = max(1, len(loss) // 20)
    smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, loss, lw=0.6, alpha=0.5, label="loss")
    ax.plot(steps[k - 1:], smooth, lw=1.5, label=f"moving mean ({k})")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return out


def training_montage(net: torch.nn.Module, ts: TrainingSet, cfg: SynthesizerConfig, scheme: LabelScheme, n_condition: int,
                     out: Path, progress: bool | None = None, prior: torch.Tensor | None = None) -> Path | None:
    """Real vs synthetic (DDIM with the profile's eta, EMA weights) for the first training masks, on the model grid."""
    from components.viz import render_montage

    n = min(cfg.train.montage_cases, len(ts))
    if n == 0:
        return None
    device = next(net.parameters()).device
    labels = torch.stack([torch.from_numpy(ts.get(i)[1]).long() for i in range(n)])
    gens = [make_generator(cfg.seed + 7919 * (i + 1), device) for i in range(n)]
    x = sample_images(net, labels, n_condition, cfg.diffusion, gens, sampler="ddim", steps=cfg.train.montage_steps,
                      eta=cfg.sample.eta, amp=cfg.train.amp, progress=progress, prior=prior).numpy()
    cases = []
    for i in range(n):
        real, lab = ts.get(i)
        head = lab >= HEAD
        seg = labels_to_seg(lab, scheme)
        for tag, vol in (("real", real), ("synthetic", x[i])):
            disp = (np.clip(vol, -1, 1) + 1.0) * 0.5 * head[None]  # display scale: 0 outside the head
            cases.append({"case_id": f"{ts.case_ids[i]}\n{tag}", "images": {m: disp[c] for c, m in enumerate(MODALITIES)},
                          "seg": seg, "affine": ts.affine(i)})
    return render_montage(cases, out, title=f"real vs synthetic (DDIM {cfg.train.montage_steps}, eta "
                                            f"{cfg.sample.eta:g}, same masks) "
                                            f"- {cfg.profile}")


# --------------------------------------------------------------------------- the loop
def extends_exactly(old: SynthesizerConfig, new: SynthesizerConfig) -> bool:
    """Whether continuing a run started for ``old.train.steps`` up to ``new.train.steps`` trains exactly
    as an uninterrupted ``new`` run: the same total, or a learning-rate schedule that does not depend
    on the total (a cosine decay does: its curve is stretched by a new total)."""
    return old.train.steps == new.train.steps or new.train.lr_schedule == "constant"


def _check_resumable(paths: ModelPaths, cfg: SynthesizerConfig, ds: Dataset) -> None:
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
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    aside = paths.root.with_name(f"{paths.root.name}.replaced-{stamp}")
    os.replace(paths.root, aside)
    log.warning("model %s was trained with another config, step schedule or on other cases: moved to %s, "
                "training a new one", paths.root.name, aside)
    return False


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
) -> TrainResult:
    """Train (or resume) model ``name`` on the train split of ``dataset``; log to MLflow if ``track``."""
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
        _check_resumable(paths, cfg, ds)
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
        ck = torch.load(existing[-1][1], map_location="cpu", weights_only=True)
        if ck.get("config_sha256") != config_sha:
            raise SynthesisError(f"checkpoint {existing[-1][1]} belongs to another config; cannot resume")
        net.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["optimizer"])
        for k, g in gens.items():
            g.set_state(ck["rng"][k])
        start, ema_updates = int(ck["step"]), int(ck["ema_updates"])
        if prior is not None and "prior" in ck:  # the prior is fixed when training starts
            prior = ck["prior"]
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
        _plot_loss(rows, paths.loss_plot, f"{name} ({cfg.profile}): {ds.name}, {len(ts)} train cases")
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
