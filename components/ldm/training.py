"""Training of the ldm synthesizer: the autoencoder stage, the latent scale factor, the diffusion stage.

Both stages checkpoint (weights, optimisers, step, the generators of the data and noise streams) every
``checkpoint_every`` steps, so a killed run resumes where its last checkpoint left it; a finished
autoencoder stage is kept as ``autoencoder.pt`` and never retrained by a resume.
"""

from __future__ import annotations

import copy
import csv
import datetime as _dt
import io
import logging
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from components.backends.registry import ModelSummary
from components.devices import resolve_device
from components.io import atomic_path, remove_stale_temp, write_json_atomic, write_text_atomic
from components.ldm.config import LdmConfig, LdmError
from components.ldm.networks import (
    build_autoencoder,
    build_discriminator,
    build_scheduler,
    build_unet,
    count_parameters,
    latent_condition,
)
from components.ldm.store import LdmPaths, Stage, ldm_paths, move_aside, read_json
from components.progress import tqdm
from components.seeds import derive_seed
from components.synthesis.data import (
    HEAD,
    TrainingSet,
    condition_channels,
    draw_batch,
    n_condition_channels,
    prepare_training_set,
)
from components.synthesis.training import NullTracker, ema_decay_at, training_statistics, update_ema
from data_catalog import MODALITIES, Dataset, code_version, open_dataset

log = logging.getLogger(__name__)

EXPERIMENT = "synthesizer"
LOG_FIELDS = {"autoencoder": ("step", "loss", "l1", "kl", "perceptual", "adv_g", "disc", "lr", "elapsed_s"),
              "diffusion": ("step", "loss", "lr", "elapsed_s")}


# --------------------------------------------------------------------------- small helpers
def stage_lr(stage: Any, step: int) -> float:
    """Adam's learning rate at ``step``: lr times lr_gamma for each milestone reached (MultiStepLR)."""
    return stage.lr * stage.lr_gamma ** sum(step >= m for m in stage.lr_milestones)


def read_log(path: Path, upto: int | None = None) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with open(path, encoding="utf-8", newline="") as fh:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(fh)]
    return [r for r in rows if upto is None or r["step"] <= upto]


def write_log(path: Path, stage: Stage, rows: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOG_FIELDS[stage], lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (int(r[k]) if k == "step" else repr(float(r[k]))) for k in LOG_FIELDS[stage]})
    write_text_atomic(path, buf.getvalue())


def save_blob(path: Path, blob: dict[str, Any]) -> None:
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(blob, tmp)


def save_checkpoint(paths: LdmPaths, stage: Stage, step: int, blob: dict[str, Any], keep: int) -> None:
    save_blob(paths.checkpoint(stage, step), {"stage": stage, "step": int(step), **blob})
    for _, old in paths.list_checkpoints(stage)[:-keep]:
        old.unlink(missing_ok=True)


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def kl_loss(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma) || N(0, 1)) summed over the latent voxels, mean over the batch (the bundle's term)."""
    kl = 0.5 * torch.sum(z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2)) - 1, dim=[1, 2, 3, 4])
    return kl.mean()


def perceptual_loss_fn(cfg: LdmConfig) -> torch.nn.Module | None:
    """MONAI's 2.5-D ResNet-50 perceptual loss from the local state dict, or None when off. Never downloads."""
    if not cfg.perceptual_on:
        return None
    path = Path(str(cfg.perceptual_weights)).expanduser()
    if not path.is_file():
        raise LdmError(f"perceptual_weights {str(path)!r}: no such file; give a local torchvision ResNet-50 state dict, "
                       f"or set perceptual_weights to null to train without the perceptual loss")
    from monai.losses import PerceptualLoss

    return PerceptualLoss(spatial_dims=3, network_type="resnet50", is_fake_3d=True,
                          fake_3d_ratio=cfg.loss.fake_3d_ratio, pretrained=True, pretrained_path=str(path))


def perceptual_per_modality(loss_fn: torch.nn.Module, recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The perceptual loss of each modality as its own grey image ([-1, 1] -> [0, 1], the network's range)."""
    b, c = x.shape[:2]
    return loss_fn(((recon.float() + 1) / 2).reshape(b * c, 1, *x.shape[2:]),
                   ((x + 1) / 2).reshape(b * c, 1, *x.shape[2:]))


def flip_variants(cfg: LdmConfig) -> list[tuple[int, ...]]:
    """The flips the diffusion stage learns: none, and each non-empty subset of data.flip_axes when flips are on."""
    axes = list(cfg.data.flip_axes) if cfg.data.flip_prob > 0 else []
    out: list[tuple[int, ...]] = [()]
    for a in axes:
        out += [(*v, a) for v in out]
    return out


@torch.no_grad()
def encode_training_set(ae: torch.nn.Module, ts: TrainingSet, cfg: LdmConfig, n_cond: int, device: torch.device,
                        progress: bool | None = None) -> dict[str, Any]:
    """Posterior means of every training case (each flip variant) on the whole model grid, the mask on
    the latent grid, and the reconstruction L1 of the unflipped cases (whole grid and inside the head)."""
    ae.eval()
    lat, cond, l1, l1_head = [], [], [], []
    variants = flip_variants(cfg)
    for i in tqdm(range(len(ts)), desc="encode training cases", unit="case", disable=None if progress is None else not progress):
        img, lab = ts.get(i)
        for v in variants:
            x = torch.from_numpy(np.ascontiguousarray(np.flip(img, [a + 1 for a in v]) if v else img))[None].to(device)
            labs = torch.from_numpy(np.ascontiguousarray(np.flip(lab, list(v)) if v else lab)).long()[None]
            with _autocast(cfg, device):
                z_mu, _ = ae.encode(x)
            z_mu = z_mu.float()
            lat.append(z_mu.cpu()[0])
            cond.append(latent_condition(labs, n_cond, cfg.autoencoder.factor)[0])
            if not v:
                with _autocast(cfg, device):
                    rec = ae.decode(z_mu).float().clamp(-1, 1)
                err = (rec - x).abs().mean(1)[0].cpu()
                head = torch.from_numpy(lab >= HEAD)
                l1.append(float(err.mean()))
                l1_head.append(float(err[head].mean()))
    latents = torch.stack(lat)
    return {"latents": latents, "cond": torch.stack(cond), "std": float(latents.std()), "mean": float(latents.mean()),
            "recon_l1": float(np.mean(l1)), "recon_l1_head": float(np.mean(l1_head))}


def _autocast(cfg: LdmConfig, device: torch.device):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.amp and device.type == "cuda")


# --------------------------------------------------------------------------- the card
def _card(paths: LdmPaths, name: str, cfg: LdmConfig, ds: Dataset, train_cases: list[str], device: torch.device,
          prev: dict[str, Any]) -> dict[str, Any]:
    scheme = ds.label_scheme
    return {
        "name": name, "backend": "ldm", "config": cfg.model_dump(mode="json"), "config_sha256": cfg.digest(),
        "stage_sha256": {s: cfg.stage_digest(s) for s in ("autoencoder", "diffusion")},
        "dataset": ds.name, "dataset_manifest_sha256": ds.manifest_digest, "train_cases": train_cases,
        "label_scheme": scheme.name, "modalities": list(MODALITIES), "n_condition": n_condition_channels(scheme),
        "condition_channels": {"background": 0, "head": HEAD,
                               **{f"{k} (seg {v})": condition_channels(scheme)[v] for k, v in scheme.labels.items()}},
        "conditioning": "one-hot mask averaged onto the latent grid, concatenated to the noisy latent",
        "perceptual_loss": f"on ({cfg.perceptual_weights})" if cfg.perceptual_on else "off",
        "seeds": {"config": cfg.seed, **{f"{s}_{k}": derive_seed(cfg.seed, s, k)
                                         for s in ("autoencoder", "diffusion") for k in ("data", "noise")}},
        "device": str(device), "scale_factor": prev.get("scale_factor"),
        "scale_factor_source": "1 / std of the encoder's posterior means over all training cases (and their flips)",
        "stages": prev.get("stages", {}), "code_version": code_version(),
        "updated": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def _check_existing(paths: LdmPaths, name: str, cfg: LdmConfig, ds: Dataset, resume: bool) -> tuple[dict[str, Any], bool]:
    """(previous card, already finished with this exact config). Refuses to overwrite a model without resume
    and to resume one trained with other settings or data."""
    prev = read_json(paths.config) if paths.config.is_file() else {}
    has_weights = bool(paths.list_checkpoints("autoencoder") or paths.list_checkpoints("diffusion")
                       or paths.autoencoder.is_file())
    done = (prev.get("config_sha256") == cfg.digest() and prev.get("dataset") == ds.name
            and prev.get("dataset_manifest_sha256") == ds.manifest_digest
            and prev.get("stages", {}).get("diffusion", {}).get("done") is True and paths.diffusion.is_file())
    if done or not has_weights:
        return prev, done
    if not resume:
        raise LdmError(f"model {name!r} already has weights in {paths.root}: pass --resume to continue it, or choose "
                       f"another --name")
    if prev.get("dataset") != ds.name:
        raise LdmError(f"model {name!r} was trained on dataset {prev.get('dataset')!r}, not {ds.name!r}; it cannot resume "
                       f"on another dataset: choose another --name")
    if prev.get("stage_sha256", {}).get("autoencoder") != cfg.stage_digest("autoencoder"):
        raise LdmError(f"model {name!r}: its autoencoder was trained with other settings than profile "
                       f"{cfg.profile!r}; it cannot resume with them: choose another --name")
    if prev.get("dataset_manifest_sha256") != ds.manifest_digest:
        log.warning("dataset %s changed since model %s started training; resuming on the current cases", ds.name, name)
    return prev, False


def _auto_resume(paths: LdmPaths, cfg: LdmConfig, ds: Dataset) -> bool:
    """The pipeline's policy: continue a model of these autoencoder settings, this dataset and these cases that
    is not past the steps asked for; move any other aside to ``<name>.replaced-<UTC time>`` (never deleted)
    and start anew, so the model depends on the config, never on the workspace's history."""
    if not paths.root.exists():
        return False
    try:
        prev = read_json(paths.config) if paths.config.is_file() else {}
        same = (prev.get("dataset") == ds.name and prev.get("dataset_manifest_sha256") == ds.manifest_digest
                and prev.get("stage_sha256", {}).get("autoencoder") == cfg.stage_digest("autoencoder"))
        if same and paths.autoencoder.is_file():
            same = int(torch.load(paths.autoencoder, map_location="cpu", weights_only=True)["step"]) <= cfg.autoencoder_train.steps
        ae_ck = paths.list_checkpoints("autoencoder")
        same = same and (not ae_ck or ae_ck[-1][0] <= cfg.autoencoder_train.steps)
        df_ck = paths.list_checkpoints("diffusion")
        if same and df_ck and df_ck[-1][0] > cfg.diffusion_train.steps:  # past the steps: only if of these settings
            blob = torch.load(df_ck[-1][1], map_location="cpu", weights_only=True)
            same = blob.get("config_sha256") != cfg.stage_digest("diffusion")
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:  # unreadable or outdated: not ours
        log.info("model %s: cannot compare its settings (%s: %s)", paths.root.name, type(err).__name__, err)
        same = False
    if same:
        return True
    aside = move_aside(paths)
    log.warning("model %s was trained with other settings or on other cases: moved to %s, training a new one",
                paths.root.name, aside)
    return False


# --------------------------------------------------------------------------- entry point
def train_ldm(workspace: str | Path, dataset: str, name: str, cfg: LdmConfig, *, resume: bool | Literal["auto"] = False,
              track: bool = True, progress: bool | None = None) -> ModelSummary:
    """Train (or resume) ldm model ``name`` on the train split of ``dataset``; one MLflow run if ``track``."""
    ds = open_dataset(workspace, dataset)
    paths = ldm_paths(workspace, name)
    if cfg.perceptual_on and not Path(str(cfg.perceptual_weights)).expanduser().is_file():
        perceptual_loss_fn(cfg)  # refuses a missing weights file before anything is written
    if resume == "auto":  # the pipeline's policy: continue a model of the same settings and data, else start anew
        resume = _auto_resume(paths, cfg, ds)
    if not track:
        return _train(ds, paths, name, cfg, bool(resume), NullTracker(), progress)
    from components.tracking import start_run

    tags = {"stage": "synthesizer", "model": name, "dataset": dataset, "profile": cfg.profile, "resume": resume,
            "backend": "ldm"}
    with start_run(workspace, EXPERIMENT, run_name=f"train {name}", tags=tags) as run:
        run.log_params({"backend": "ldm", "perceptual_loss": "on" if cfg.perceptual_on else "off"})
        out = _train(ds, paths, name, cfg, bool(resume), run, progress)
        out.run_id = run.run_id
        return out


def _train(ds: Dataset, paths: LdmPaths, name: str, cfg: LdmConfig, resume: bool, tracker: Any,
           progress: bool | None) -> ModelSummary:
    t_call = time.perf_counter()
    cases = ds.ok_cases("train")
    if cases.empty:
        raise LdmError(f"dataset {ds.name!r} has no ok cases in the train split (of {len(ds.manifest)} cases); "
                       f"the synthesizer trains on the train split only")
    prev, done = _check_existing(paths, name, cfg, ds, resume)
    if done:
        log.info("model %s is already trained with this config; nothing to do", name)
        return _summary(paths, name, prev, t_call, tracker)
    device = resolve_device(cfg.device, "ldm synthesizer")
    paths.root.mkdir(parents=True, exist_ok=True)
    if remove_stale_temp(paths.root):
        log.info("model %s: removed temporary files of an interrupted run", name)
    card = _card(paths, name, cfg, ds, cases["case_id"].tolist(), device, prev)
    card["stages"] = {k: v for k, v in card["stages"].items() if k == "autoencoder"}  # a killed run is never done
    write_json_atomic(paths.config, card)
    scheme = ds.label_scheme
    n_cond = n_condition_channels(scheme)
    ts = prepare_training_set(ds, cases, cfg.data, scheme, paths.cache, progress)
    write_json_atomic(paths.stats, training_statistics(ts, cfg))
    tracker.log_params({"config": cfg.model_dump(mode="json"), "dataset": ds.name, "n_train_cases": len(ts),
                        "device": str(device), "latent_shape": list(cfg.latent_shape)})

    # ---- stage 1: the autoencoder (kept once finished)
    ae = build_autoencoder(cfg).to(device)
    ae_done = paths.autoencoder.is_file() and card["stages"].get("autoencoder", {}).get("done") is True
    if ae_done:
        blob = torch.load(paths.autoencoder, map_location="cpu", weights_only=True)
        ae_done = blob.get("config_sha256") == cfg.stage_digest("autoencoder")
        if ae_done and int(blob["step"]) > cfg.autoencoder_train.steps:
            raise LdmError(f"model {name!r}: {paths.autoencoder} is trained to step {blob['step']}, beyond the "
                           f"{cfg.autoencoder_train.steps} autoencoder_train.steps asked for; choose another --name")
        ae_done = ae_done and int(blob["step"]) == cfg.autoencoder_train.steps
    if ae_done:
        ae.load_state_dict(blob["autoencoder"])
        log.info("model %s: autoencoder stage already finished (step %d), kept", name, blob["step"])
    else:
        if card["stages"].pop("autoencoder", None) is not None:
            write_json_atomic(paths.config, card)
        _train_autoencoder(ae, ts, cfg, paths, resume, tracker, device, progress)
    enc = encode_training_set(ae, ts, cfg, n_cond, device, progress)
    if not ae_done:
        # scale = 1 / std(z): the latents the diffusion learns have unit variance, like its noise
        scale = 1.0 / max(enc["std"], 1e-8)
        save_blob(paths.autoencoder, {"format": 1, "stage": "autoencoder", "step": cfg.autoencoder_train.steps,
                                      "config_sha256": cfg.stage_digest("autoencoder"), "autoencoder": state(ae),
                                      "scale_factor": scale, "latent_std": enc["std"], "latent_mean": enc["mean"]})
        rows = read_log(paths.log("autoencoder"))
        card["stages"]["autoencoder"] = {
            "done": True, "steps": cfg.autoencoder_train.steps, "n_params": count_parameters(ae),
            "train_seconds": rows[-1]["elapsed_s"] if rows else 0.0, "recon_l1": enc["recon_l1"],
            "recon_l1_head": enc["recon_l1_head"], "latent_std": enc["std"], "latent_mean": enc["mean"]}
        card["scale_factor"] = scale
        write_json_atomic(paths.config, card)
        tracker.log_metrics({"ae_recon_l1": enc["recon_l1"], "ae_recon_l1_head": enc["recon_l1_head"],
                             "scale_factor": scale}, step=cfg.autoencoder_train.steps)
    scale = float(torch.load(paths.autoencoder, map_location="cpu", weights_only=True)["scale_factor"])

    # ---- stage 2: the latent diffusion U-Net on z * scale
    unet, n_params = _train_diffusion(enc["latents"] * scale, enc["cond"], cfg, n_cond, paths, resume, tracker, device,
                                      progress)
    rows = read_log(paths.log("diffusion"))
    card["stages"]["diffusion"] = {"done": True, "steps": cfg.diffusion_train.steps, "n_params": n_params,
                                   "train_seconds": rows[-1]["elapsed_s"] if rows else 0.0,
                                   "final_loss": rows[-1]["loss"] if rows else float("nan")}
    card["scale_factor"] = scale
    card["updated"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    write_json_atomic(paths.config, card)
    if hasattr(tracker, "flush"):
        tracker.flush()
    for p in (paths.config, paths.stats, paths.log("autoencoder"), paths.log("diffusion")):
        if p.is_file():
            tracker.log_artifact(p)
    return _summary(paths, name, card, t_call, tracker)


def _summary(paths: LdmPaths, name: str, card: dict[str, Any], t_call: float, tracker: Any) -> ModelSummary:
    st = card.get("stages", {})
    ae, df = st.get("autoencoder", {}), st.get("diffusion", {})
    note = (f"autoencoder {ae.get('steps')} steps in {ae.get('train_seconds', 0):.0f} s (reconstruction L1 "
            f"{ae.get('recon_l1_head', float('nan')):.4f} in the head), scale factor {card.get('scale_factor', 0):.4g}, "
            f"diffusion {df.get('steps')} steps in {df.get('train_seconds', 0):.0f} s (last loss "
            f"{df.get('final_loss', float('nan')):.4f}), perceptual loss {card.get('perceptual_loss')}")
    return ModelSummary(name=name, model_dir=paths.root, seconds=time.perf_counter() - t_call,
                        train_seconds=float(ae.get("train_seconds", 0.0)) + float(df.get("train_seconds", 0.0)),
                        montage=paths.montage if paths.montage.is_file() else None,
                        run_id=getattr(tracker, "run_id", None), note=note)


def _resume_from(paths: LdmPaths, stage: Stage, digest: str, resume: bool, steps: int) -> tuple[int, dict[str, Any] | None]:
    existing = paths.list_checkpoints(stage)
    if not (resume and existing):
        return 0, None
    step, path = existing[-1]
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if blob.get("config_sha256") != digest:  # e.g. diffusion checkpoints of an autoencoder trained further since
        log.info("the %s checkpoints in %s were written with other settings: the stage starts again", stage, path.parent)
        for _, old in existing:
            old.unlink(missing_ok=True)
        return 0, None
    if step > steps:
        raise LdmError(f"{stage} checkpoint {path} is at step {step}, beyond the {steps} steps asked for")
    log.info("resuming the %s stage from step %d (%s)", stage, step, path.name)
    return step, blob


# --------------------------------------------------------------------------- stage 1
def _train_autoencoder(ae: torch.nn.Module, ts: TrainingSet, cfg: LdmConfig, paths: LdmPaths, resume: bool,
                       tracker: Any, device: torch.device, progress: bool | None) -> None:
    from monai.losses import PatchAdversarialLoss

    st, w = cfg.autoencoder_train, cfg.loss
    digest = cfg.stage_digest("autoencoder")
    disc = build_discriminator(cfg).to(device) if w.adversarial > 0 else None
    opt_g = torch.optim.Adam(ae.parameters(), lr=st.lr)
    opt_d = torch.optim.Adam(disc.parameters(), lr=st.lr) if disc is not None else None
    adv = PatchAdversarialLoss(criterion="least_squares")
    perceptual = perceptual_loss_fn(cfg)
    if perceptual is not None:
        perceptual = perceptual.to(device)
    gens = {k: torch.Generator().manual_seed(derive_seed(cfg.seed, "autoencoder", k)) for k in ("data", "noise")}
    start, blob = _resume_from(paths, "autoencoder", digest, resume, st.steps)
    if blob is not None:
        ae.load_state_dict(blob["autoencoder"])
        opt_g.load_state_dict(blob["opt_g"])
        if disc is not None:
            disc.load_state_dict(blob["discriminator"])
            opt_d.load_state_dict(blob["opt_d"])
        for k in gens:
            gens[k].set_state(blob[f"rng_{k}"])
    rows = read_log(paths.log("autoencoder"), upto=start) if start else []
    elapsed0 = rows[-1]["elapsed_s"] if rows else 0.0
    data_cfg = cfg.data.model_copy(update={"train_crop": st.crop})
    ae.train()
    t0 = time.perf_counter()
    bar = tqdm(range(start + 1, st.steps + 1), desc="train autoencoder", unit="step", initial=start, total=st.steps,
               disable=None if progress is None else not progress)
    for step in bar:
        lr = stage_lr(st, step)
        for o in (opt_g, opt_d):
            for g in (o.param_groups if o is not None else []):
                g["lr"] = lr
        x, _, _ = draw_batch(ts, st.batch_size, data_cfg, gens["data"])
        x = x.to(device)
        with _autocast(cfg, device):
            z_mu, z_sigma = ae.encode(x)
            # the reparameterised sample drawn from our generator (AutoencoderKL.forward would use the global RNG)
            eps = torch.randn(z_mu.shape, generator=gens["noise"]).to(device=device, dtype=z_mu.dtype)
            recon = ae.decode(z_mu + eps * z_sigma)
        recon = recon.float()
        l1 = F.l1_loss(recon, x)
        kl = kl_loss(z_mu.float(), z_sigma.float())
        loss = w.l1 * l1 + w.kl * kl
        p_loss = torch.zeros(())
        if perceptual is not None:
            with torch.random.fork_rng(devices=[]):  # its slice choice draws from the global RNG: seed it per step
                torch.manual_seed(derive_seed(cfg.seed, "perceptual", step))
                p_loss = perceptual_per_modality(perceptual, recon, x)
            loss = loss + w.perceptual * p_loss
        adv_on = disc is not None and step > w.adversarial_warmup_steps
        g_adv = d_loss = torch.zeros(())
        if adv_on:
            g_adv = adv(disc(recon.contiguous())[-1], target_is_real=True, for_discriminator=False)
            loss = loss + w.adversarial * g_adv
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        if adv_on:
            opt_d.zero_grad(set_to_none=True)
            d_fake = adv(disc(recon.detach().contiguous())[-1], target_is_real=False, for_discriminator=True)
            d_real = adv(disc(x.contiguous())[-1], target_is_real=True, for_discriminator=True)
            d_loss = w.adversarial * 0.5 * (d_fake + d_real)
            d_loss.backward()
            opt_d.step()
        vals = {k: float(v.detach()) for k, v in
                (("loss", loss), ("l1", l1), ("kl", kl), ("perceptual", p_loss), ("adv_g", g_adv), ("disc", d_loss))}
        rows.append({"step": step, **vals, "lr": lr, "elapsed_s": elapsed0 + time.perf_counter() - t0})
        bar.set_postfix(l1=f"{vals['l1']:.4f}")
        tracker.log_metrics({f"ae_{k}": v for k, v in vals.items()}, step=step)
        if step % st.checkpoint_every == 0 or step == st.steps:
            write_log(paths.log("autoencoder"), "autoencoder", rows)
            ck = {"config_sha256": digest, "autoencoder": state(ae), "opt_g": opt_g.state_dict(),
                  **{f"rng_{k}": g.get_state() for k, g in gens.items()}}
            if disc is not None:
                ck.update(discriminator=state(disc), opt_d=opt_d.state_dict())
            save_checkpoint(paths, "autoencoder", step, ck, st.keep_checkpoints)
    bar.close()
    if rows:
        log.info("autoencoder: %d steps, last L1 %.4f, %.2f s/step", st.steps, rows[-1]["l1"],
                 (time.perf_counter() - t0) / max(1, st.steps - start))


# --------------------------------------------------------------------------- stage 2
def _train_diffusion(latents: torch.Tensor, cond: torch.Tensor, cfg: LdmConfig, n_cond: int, paths: LdmPaths,
                     resume: bool, tracker: Any, device: torch.device, progress: bool | None) -> tuple[torch.nn.Module, int]:
    st = cfg.diffusion_train
    digest = cfg.stage_digest("diffusion")
    unet = build_unet(cfg, n_cond).to(device)
    ema = copy.deepcopy(unet).requires_grad_(False) if st.ema_decay is not None else None
    opt = torch.optim.Adam(unet.parameters(), lr=st.lr)
    scheduler = build_scheduler(cfg.diffusion, "ddpm")
    gens = {k: torch.Generator().manual_seed(derive_seed(cfg.seed, "diffusion", k)) for k in ("data", "noise")}
    start, blob = _resume_from(paths, "diffusion", digest, resume, st.steps)
    ema_updates = 0
    if blob is not None:
        unet.load_state_dict(blob["unet"])
        opt.load_state_dict(blob["opt"])
        if ema is not None:
            ema.load_state_dict(blob["ema"])
        ema_updates = int(blob.get("ema_updates", 0))
        for k in gens:
            gens[k].set_state(blob[f"rng_{k}"])
    rows = read_log(paths.log("diffusion"), upto=start) if start else []
    elapsed0 = rows[-1]["elapsed_s"] if rows else 0.0
    scale = float(torch.load(paths.autoencoder, map_location="cpu", weights_only=True)["scale_factor"])
    T = cfg.diffusion.num_train_timesteps
    unet.train()
    t0 = time.perf_counter()
    bar = tqdm(range(start + 1, st.steps + 1), desc="train latent diffusion", unit="step", initial=start, total=st.steps,
               disable=None if progress is None else not progress)
    for step in bar:
        lr = stage_lr(st, step)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(len(latents), (st.batch_size,), generator=gens["data"])
        z = latents[idx].to(device)
        c = cond[idx].to(device)
        noise = torch.randn(z.shape, generator=gens["noise"]).to(device)
        t = torch.randint(0, T, (st.batch_size,), generator=gens["noise"]).to(device)
        with _autocast(cfg, device):
            pred = unet(torch.cat([scheduler.add_noise(z, noise, t), c], dim=1), timesteps=t)
        loss = F.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss = loss.detach()
        if ema is not None:
            update_ema(ema, unet, ema_decay_at(st.ema_decay, ema_updates))
            ema_updates += 1
        rows.append({"step": step, "loss": float(loss), "lr": lr, "elapsed_s": elapsed0 + time.perf_counter() - t0})
        bar.set_postfix(loss=f"{float(loss):.4f}")
        tracker.log_metrics({"ldm_loss": float(loss)}, step=step)
        if step % st.checkpoint_every == 0 or step == st.steps:
            write_log(paths.log("diffusion"), "diffusion", rows)
            sample_net = ema if ema is not None else unet
            ck = {"config_sha256": digest, "unet": state(unet), "opt": opt.state_dict(), "ema_updates": ema_updates,
                  **{f"rng_{k}": g.get_state() for k, g in gens.items()}}
            if ema is not None:
                ck["ema"] = state(ema)
            save_checkpoint(paths, "diffusion", step, ck, st.keep_checkpoints)
            save_blob(paths.diffusion, {"format": 1, "stage": "diffusion", "step": step, "config_sha256": digest,
                                        "unet": state(sample_net), "scale_factor": scale,
                                        "weights": "ema" if ema is not None else "model"})
    bar.close()
    return (ema if ema is not None else unet), count_parameters(unet)
