"""Training of the label model: the label autoencoder, the latent scale factor, the unconditional latent
diffusion model and (segmenter only) the ControlNet on the frozen diffusion model.

Every stage checkpoints (weights, optimiser, step, the generators of its data and noise streams) every
``checkpoint_every`` steps, so a killed run resumes where its last checkpoint left it; a finished stage is
kept as ``<stage>.pt`` and only trained again when its settings or its training cases change (a stage
trained again makes every later stage train again). Every random draw comes from generators seeded by
``derive_seed(config.seed, stage, stream)``, recorded in the card.
"""

from __future__ import annotations

import copy
import csv
import datetime as _dt
import hashlib
import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from components.devices import resolve_device as _resolve_device
from components.io import atomic_path, remove_stale_temp, write_json_atomic, write_text_atomic
from components.labelldm.config import STAGES, LabelLdmConfig, LabelLdmError, Stage
from components.labelldm.data import PreparedCases, n_classes
from components.labelldm.networks import (
    build_autoencoder,
    build_controlnet,
    build_scheduler,
    build_unet,
    count_parameters,
    diffusion_target,
    kl_loss,
    one_hot,
)
from components.labelldm.store import LabelModelPaths, read_card, stage_done
from components.progress import tqdm
from components.seeds import derive_seed
from components.synthesis.data import HEAD, condition_channels
from components.synthesis.training import ema_decay_at, update_ema
from data_catalog import MODALITIES, LabelScheme, code_version

log = logging.getLogger(__name__)

FORMAT = 1


class TrainingStopped(RuntimeError):
    """Raised by ``train_label_model(..., stop_after=n)``: the call stopped as a killed process would."""


@dataclass
class LabelTrainSummary:
    root: Path
    train_cases: tuple[str, ...]
    stages: dict[str, dict[str, Any]]
    seconds: float          # wall time of this call
    train_seconds: float    # all training of the stages asked for, summed over resumed runs
    trained: list[str] = field(default_factory=list)  # the stages this call trained (the rest were kept)

    def line(self) -> str:
        parts = [f"{s} {d.get('steps')} steps in {d.get('train_seconds', 0.0):.0f} s" for s, d in self.stages.items()]
        kept = "" if self.trained else " (kept: already trained)"
        return f"label model {self.root.name}: {', '.join(parts)}{kept}; {self.seconds:.1f} s -> {self.root}"


def resolve_device(name: str, gpu: str | None = None) -> torch.device:
    """``name`` (auto, cpu, cuda) resolved; with ``gpu`` (an id the ablation's GPU pool handed out), that GPU."""
    device = _resolve_device(name, "label model")
    if gpu is None or device.type != "cuda":
        return device
    from components.segmentation.gpus import visible_gpu_ids

    ids = visible_gpu_ids()
    return torch.device("cuda", ids.index(gpu) if gpu in ids else int(gpu))


# --------------------------------------------------------------------------- small helpers
def stage_lr(st: Any, step: int) -> float:
    """Adam's learning rate at ``step``: lr times lr_gamma for each milestone reached (MultiStepLR)."""
    return st.lr * st.lr_gamma ** sum(step >= m for m in st.lr_milestones)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def _save(path: Path, blob: dict[str, Any]) -> None:
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(blob, tmp)


def _read_log(path: Path, upto: int) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with open(path, encoding="utf-8", newline="") as fh:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(fh)]
    return [r for r in rows if r["step"] <= upto]


def _write_log(path: Path, rows: list[dict[str, float]]) -> None:
    if not rows:
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (int(v) if k == "step" else repr(float(v))) for k, v in r.items()})
    write_text_atomic(path, buf.getvalue())


def _autocast(cfg: LabelLdmConfig, device: torch.device):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.amp and device.type == "cuda")


def flip_variants(cfg: LabelLdmConfig) -> list[tuple[int, ...]]:
    """The flips the latent stages learn: none, and each non-empty subset of data.flip_axes when flips are on."""
    axes = list(cfg.data.flip_axes) if cfg.data.flip_prob > 0 else []
    out: list[tuple[int, ...]] = [()]
    for a in axes:
        out += [(*v, a) for v in out]
    return out


def cases_key(cases: PreparedCases) -> str:
    """What the training cases are: their ids and the fingerprints of their prepared files."""
    return hashlib.sha256(json.dumps([[c, i.get("fingerprint", "")] for c, i in zip(cases.case_ids, cases.infos,
                                                                                   strict=True)]).encode()).hexdigest()


def stage_key(cfg: LabelLdmConfig, stage: Stage, cases: PreparedCases) -> str:
    return hashlib.sha256(f"{cfg.stage_digest(stage)}|{cases_key(cases)}".encode()).hexdigest()


# --------------------------------------------------------------------------- one stage, resumable
def _run_stage(paths: LabelModelPaths, stage: Stage, key: str, st: Any, nets: dict[str, torch.nn.Module],
               opt: torch.optim.Optimizer, gens: dict[str, torch.Generator], step_fn: Callable[[int], dict[str, float]],
               ema: torch.nn.Module | None, progress: bool | None, stop_after: int | None) -> list[dict[str, float]]:
    """Steps 1..st.steps of one stage (from its last checkpoint of the same ``key`` when there is one)."""
    start, blob = 0, None
    found = paths.list_checkpoints(stage)
    if found:
        step0, path = found[-1]
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("key") != key or step0 > st.steps:
            log.info("%s: the %s checkpoints were written with other settings or cases: the stage starts again",
                     paths.root, stage)
            for _, old in found:
                old.unlink(missing_ok=True)
            blob = None
        else:
            start = step0
    ema_updates = 0
    if blob is not None:
        for k, net in nets.items():
            net.load_state_dict(blob[k])
        opt.load_state_dict(blob["opt"])
        if ema is not None:
            ema.load_state_dict(blob["ema"])
        ema_updates = int(blob.get("ema_updates", 0))
        for k, g in gens.items():
            g.set_state(blob[f"rng_{k}"])
        log.info("%s: resuming the %s stage from step %d", paths.root, stage, start)
    rows = _read_log(paths.log(stage), upto=start) if start else []
    elapsed0 = rows[-1]["elapsed_s"] if rows else 0.0
    t0 = time.perf_counter()
    bar = tqdm(range(start + 1, st.steps + 1), desc=f"{paths.root.name} {stage}", unit="step", initial=start,
               total=st.steps, disable=None if progress is None else not progress)
    for step in bar:
        if stop_after is not None and step - start > stop_after:
            bar.close()
            raise TrainingStopped(f"{paths.root}: {stage} stopped after {stop_after} steps (at {step - 1} of {st.steps})")
        lr = stage_lr(st, step)
        for g in opt.param_groups:
            g["lr"] = lr
        vals = step_fn(step)
        if ema is not None:
            update_ema(ema, next(iter(nets.values())), ema_decay_at(st.ema_decay, ema_updates))
            ema_updates += 1
        rows.append({"step": step, **vals, "lr": lr, "elapsed_s": elapsed0 + time.perf_counter() - t0})
        bar.set_postfix(loss=f"{vals['loss']:.4f}")
        if step % st.checkpoint_every == 0 and step < st.steps:
            _write_log(paths.log(stage), rows)
            ck = {"stage": stage, "step": step, "key": key, "opt": opt.state_dict(), "ema_updates": ema_updates,
                  **{k: _state(n) for k, n in nets.items()}, **{f"rng_{k}": g.get_state() for k, g in gens.items()}}
            if ema is not None:
                ck["ema"] = _state(ema)
            _save(paths.checkpoint(stage, step), ck)
            for _, old in paths.list_checkpoints(stage)[:-st.keep_checkpoints]:
                old.unlink(missing_ok=True)
    bar.close()
    _write_log(paths.log(stage), rows)
    if rows and st.steps > start:
        log.info("%s: %s stage, %d steps, last loss %.4f, %.2f s/step", paths.root.name, stage, st.steps,
                 rows[-1]["loss"], (time.perf_counter() - t0) / (st.steps - start))
    return rows


def _finish_stage(paths: LabelModelPaths, card: dict[str, Any], stage: Stage, key: str, digest: str, st: Any,
                  rows: list[dict[str, float]], blob: dict[str, Any], **extra: Any) -> None:
    _save(paths.stage(stage), {"format": FORMAT, "stage": stage, "step": st.steps, "key": key, **blob})
    card["stages"][stage] = {"done": True, "key": key, "config_sha256": digest, "steps": st.steps,
                             "train_seconds": rows[-1]["elapsed_s"] if rows else 0.0,
                             "final_loss": rows[-1]["loss"] if rows else float("nan"), **extra}
    card["updated"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    write_json_atomic(paths.card, card)
    for _, old in paths.list_checkpoints(stage):
        old.unlink(missing_ok=True)


# --------------------------------------------------------------------------- latents
@torch.no_grad()
def encode_cases(ae: torch.nn.Module, cases: PreparedCases, cfg: LabelLdmConfig, classes: int,
                 device: torch.device) -> dict[str, Any]:
    """Posterior means of every case under every flip variant, (case, variant) of each, and the reconstruction
    Dice of the tumour (classes above head) of the unflipped cases."""
    ae.eval()
    lat, index, dice = [], [], []
    for i in range(len(cases)):
        lab, _ = cases.get(i)
        for v in flip_variants(cfg):
            x = torch.from_numpy(np.ascontiguousarray(np.flip(lab, list(v)) if v else lab)).long()[None]
            with _autocast(cfg, device):
                z_mu, _ = ae.encode(one_hot(x, classes).to(device))
            lat.append(z_mu.float().cpu()[0])
            index.append((i, v))
            if not v:
                with _autocast(cfg, device):
                    rec = ae.decode(z_mu).float().argmax(1).cpu()[0]
                a, b = rec.numpy() > HEAD, lab > HEAD
                dice.append(2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0) if (a.any() or b.any()) else 1.0)
    latents = torch.stack(lat)
    return {"latents": latents, "index": index, "std": float(latents.std()), "mean": float(latents.mean()),
            "recon_dice_tumour": float(np.mean(dice))}


def _variant_images(cases: PreparedCases, index: list[tuple[int, tuple[int, ...]]], rows: list[int]) -> torch.Tensor:
    out = []
    for r in rows:
        i, v = index[r]
        img = cases.get(i)[1]
        if img is None:
            raise LabelLdmError("the ControlNet stage needs cases prepared with their images")
        out.append(torch.from_numpy(np.ascontiguousarray(np.flip(img, [a + 1 for a in v]) if v else img,
                                                         dtype=np.float32)))
    return torch.stack(out)


# --------------------------------------------------------------------------- the card
def _card(paths: LabelModelPaths, cfg: LabelLdmConfig, cases: PreparedCases, scheme: LabelScheme,
          device: torch.device, prev: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    channels = condition_channels(scheme)
    return {
        "name": paths.root.name, "backend": "labelldm", "config": cfg.model_dump(mode="json"),
        "stage_sha256": {s: cfg.stage_digest(s) for s in STAGES}, "cases_sha256": cases_key(cases),
        "train_cases": list(cases.case_ids), "label_scheme": scheme.name, "n_classes": n_classes(scheme),
        "classes": {"background": 0, "head": HEAD, **{f"{k} (seg {v})": channels[v] for k, v in scheme.labels.items()}},
        "seeds": {"config": cfg.seed, **{f"{s}_{k}": derive_seed(cfg.seed, s, k) for s in STAGES for k in ("data", "noise")},
                  "sampling": "per volume: the caller's seed (mask source: mask_seed(seed, host case, k); segmenter: "
                              "derive_seed(seed, case id, sample))"},
        "device": str(device), "scale_factor": prev.get("scale_factor"),
        "scale_factor_source": "1 / std of the encoder's posterior means over the training cases and their flips",
        "stages": dict(prev.get("stages", {})), "code_version": code_version(),
        "updated": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), **extra,
    }


# --------------------------------------------------------------------------- entry point
def train_label_model(root: str | Path, cases: PreparedCases, cfg: LabelLdmConfig, scheme: LabelScheme, *,
                      stages: tuple[Stage, ...] = ("autoencoder", "diffusion"), card_extra: dict[str, Any] | None = None,
                      gpu: str | None = None, progress: bool | None = None,
                      stop_after: int | None = None) -> LabelTrainSummary:
    """Train (or resume, or keep) the label model in folder ``root`` on ``cases`` (the training cases only).

    stages: ("autoencoder", "diffusion") for the mask source; add "controlnet" for the segmenter (its cases
    must be prepared with their images). ``stop_after`` stops the call after that many steps of the stage it
    is training, as a kill would (the tests).
    """
    t_call = time.perf_counter()
    if len(cases) == 0:
        raise LabelLdmError(f"label model {root}: no training case")
    if "controlnet" in stages and not cases.with_images:
        raise LabelLdmError(f"label model {root}: the ControlNet stage needs the training cases' images")
    paths = LabelModelPaths(Path(root))
    paths.root.mkdir(parents=True, exist_ok=True)
    if remove_stale_temp(paths.root):
        log.info("%s: removed temporary files of an interrupted run", paths.root)
    device = resolve_device(cfg.device, gpu)
    prev = read_card(paths)
    card = _card(paths, cfg, cases, scheme, device, prev, dict(card_extra or {}))
    keys = {s: stage_key(cfg, s, cases) for s in STAGES}
    classes = n_classes(scheme)
    trained: list[str] = []
    retrain = False  # once a stage trains, every later stage trains too (it learnt from the earlier weights)
    for s in STAGES:
        if s not in stages or retrain or not stage_done(paths, card, s, keys[s]):
            card["stages"].pop(s, None)
    write_json_atomic(paths.card, card)

    # ---- stage 1: the label autoencoder
    ae = build_autoencoder(cfg, classes).to(device)
    if stage_done(paths, card, "autoencoder", keys["autoencoder"]):
        ae.load_state_dict(torch.load(paths.stage("autoencoder"), map_location="cpu", weights_only=True)["autoencoder"])
    else:
        retrain = True
        rows = _train_autoencoder(ae, cases, cfg, classes, paths, keys["autoencoder"], device, progress, stop_after)
        enc = encode_cases(ae, cases, cfg, classes, device)
        scale = 1.0 / max(enc["std"], 1e-8)  # unit-variance latents, like the diffusion's noise
        card["scale_factor"] = scale
        _finish_stage(paths, card, "autoencoder", keys["autoencoder"], cfg.stage_digest("autoencoder"),
                      cfg.autoencoder_train, rows, {"autoencoder": _state(ae), "scale_factor": scale,
                                                     "latent_std": enc["std"], "latent_mean": enc["mean"]},
                      n_params=count_parameters(ae), recon_dice_tumour=enc["recon_dice_tumour"],
                      latent_std=enc["std"])
        trained.append("autoencoder")
    scale = float(torch.load(paths.stage("autoencoder"), map_location="cpu", weights_only=True)["scale_factor"])
    enc = encode_cases(ae, cases, cfg, classes, device)
    latents = enc["latents"] * scale

    # ---- stage 2: the unconditional latent diffusion model
    unet = build_unet(cfg).to(device)
    if not retrain and stage_done(paths, card, "diffusion", keys["diffusion"]):
        unet.load_state_dict(torch.load(paths.stage("diffusion"), map_location="cpu", weights_only=True)["unet"])
    else:
        retrain = True
        unet = _train_diffusion(unet, latents, cfg, paths, keys["diffusion"], card, device, progress, stop_after)
        trained.append("diffusion")

    # ---- stage 3 (segmenter): the ControlNet on the frozen diffusion model, conditioned on the MRIs
    if "controlnet" in stages and (retrain or not stage_done(paths, card, "controlnet", keys["controlnet"])):
        _train_controlnet(unet, latents, enc["index"], cases, cfg, paths, keys["controlnet"], card, device, progress,
                          stop_after)
        trained.append("controlnet")
    st = {s: card["stages"][s] for s in stages}
    return LabelTrainSummary(root=paths.root, train_cases=tuple(cases.case_ids), stages=st,
                             seconds=time.perf_counter() - t_call,
                             train_seconds=float(sum(d.get("train_seconds", 0.0) for d in st.values())), trained=trained)


def _gens(cfg: LabelLdmConfig, stage: Stage) -> dict[str, torch.Generator]:
    return {k: torch.Generator().manual_seed(derive_seed(cfg.seed, stage, k)) for k in ("data", "noise")}


def _train_autoencoder(ae: torch.nn.Module, cases: PreparedCases, cfg: LabelLdmConfig, classes: int,
                       paths: LabelModelPaths, key: str, device: torch.device, progress: bool | None,
                       stop_after: int | None) -> list[dict[str, float]]:
    from monai.losses import DiceCELoss

    st, w = cfg.autoencoder_train, cfg.loss
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=w.dice, lambda_ce=w.ce)
    opt = torch.optim.Adam(ae.parameters(), lr=st.lr)
    gens = _gens(cfg, "autoencoder")

    def step(_: int) -> dict[str, float]:
        labels, _ = cases.draw(st.batch_size, cfg.data, gens["data"])
        x = one_hot(labels, classes).to(device)
        with _autocast(cfg, device):
            z_mu, z_sigma = ae.encode(x)
            # the reparameterised sample drawn from our generator (AutoencoderKL.sampling uses the global RNG)
            eps = torch.randn(z_mu.shape, generator=gens["noise"]).to(device=device, dtype=z_mu.dtype)
            logits = ae.decode(z_mu + eps * z_sigma)
        dce = loss_fn(logits.float(), labels[:, None].to(device))
        kl = kl_loss(z_mu.float(), z_sigma.float())
        loss = dce + w.kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": float(loss.detach()), "dice_ce": float(dce.detach()), "kl": float(kl.detach())}

    ae.train()
    rows = _run_stage(paths, "autoencoder", key, st, {"autoencoder": ae}, opt, gens, step, None, progress, stop_after)
    ae.eval()
    return rows


def _train_diffusion(unet: torch.nn.Module, latents: torch.Tensor, cfg: LabelLdmConfig, paths: LabelModelPaths,
                     key: str, card: dict[str, Any], device: torch.device, progress: bool | None,
                     stop_after: int | None) -> torch.nn.Module:
    st = cfg.diffusion_train
    ema = copy.deepcopy(unet).requires_grad_(False) if st.ema_decay is not None else None
    opt = torch.optim.Adam(unet.parameters(), lr=st.lr)
    scheduler = build_scheduler(cfg.diffusion, "ddpm")
    gens = _gens(cfg, "diffusion")
    T = cfg.diffusion.num_train_timesteps

    def step(_: int) -> dict[str, float]:
        idx = torch.randint(len(latents), (st.batch_size,), generator=gens["data"])
        z = latents[idx].to(device)
        noise = torch.randn(z.shape, generator=gens["noise"]).to(device)
        t = torch.randint(0, T, (st.batch_size,), generator=gens["noise"]).to(device)
        with _autocast(cfg, device):
            pred = unet(scheduler.add_noise(z, noise, t), timesteps=t)
        loss = F.mse_loss(pred.float(), diffusion_target(scheduler, z, noise, t))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": float(loss.detach())}

    unet.train()
    rows = _run_stage(paths, "diffusion", key, st, {"unet": unet}, opt, gens, step, ema, progress, stop_after)
    out = ema if ema is not None else unet
    _finish_stage(paths, card, "diffusion", key, cfg.stage_digest("diffusion"), st, rows,
                  {"unet": _state(out), "weights": "ema" if ema is not None else "model"},
                  n_params=count_parameters(unet))
    return out.eval()


def _train_controlnet(unet: torch.nn.Module, latents: torch.Tensor, index: list[tuple[int, tuple[int, ...]]],
                      cases: PreparedCases, cfg: LabelLdmConfig, paths: LabelModelPaths, key: str,
                      card: dict[str, Any], device: torch.device, progress: bool | None, stop_after: int | None) -> None:
    seg_cfg = cfg.segmenter
    st = seg_cfg.controlnet_train
    unet = unet.eval().requires_grad_(False)  # frozen: only the ControlNet learns
    cn = build_controlnet(cfg, unet, len(MODALITIES)).to(device)
    ema = copy.deepcopy(cn).requires_grad_(False) if st.ema_decay is not None else None
    opt = torch.optim.Adam(cn.parameters(), lr=st.lr)
    scheduler = build_scheduler(cfg.diffusion, "ddpm")
    gens = _gens(cfg, "controlnet")
    T = cfg.diffusion.num_train_timesteps

    def step(_: int) -> dict[str, float]:
        idx = torch.randint(len(latents), (st.batch_size,), generator=gens["data"])
        z = latents[idx].to(device)
        cond = _variant_images(cases, index, idx.tolist()).to(device)
        noise = torch.randn(z.shape, generator=gens["noise"]).to(device)
        t = torch.randint(0, T, (st.batch_size,), generator=gens["noise"]).to(device)
        noisy = scheduler.add_noise(z, noise, t)
        with _autocast(cfg, device):
            down, mid = cn(noisy, timesteps=t, controlnet_cond=cond, conditioning_scale=seg_cfg.controlnet.conditioning_scale)
            pred = unet(noisy, timesteps=t, down_block_additional_residuals=down, mid_block_additional_residual=mid)
        loss = F.mse_loss(pred.float(), diffusion_target(scheduler, z, noise, t))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": float(loss.detach())}

    cn.train()
    rows = _run_stage(paths, "controlnet", key, st, {"controlnet": cn}, opt, gens, step, ema, progress, stop_after)
    out = ema if ema is not None else cn
    _finish_stage(paths, card, "controlnet", key, cfg.stage_digest("controlnet"), st, rows,
                  {"controlnet": _state(out), "weights": "ema" if ema is not None else "model"},
                  n_params=count_parameters(cn))
