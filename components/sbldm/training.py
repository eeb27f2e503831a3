"""Training of the sbldm synthesizer: the slice VAE, the latent scale and feature normalisation, then the
feature-conditioned diffusion U-Net on the stacked slice latents.

A finished stage is kept (``vae.pt``, ``diffusion.pt``); ``resume`` reuses a finished VAE stage of the same
settings and trains only the diffusion stage again. Random draws come from generators seeded from the
config's seed (recorded in the card): one for the data (cases, slices, flips), one for the noise.
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
from components.ldm.networks import diffusion_target
from components.progress import tqdm
from components.sbldm.config import SbldmConfig, SbldmError
from components.sbldm.diffusion import build_scheduler, build_unet
from components.sbldm.features import FeatureNorm, feature_columns, measure, seg_from_labels
from components.sbldm.store import BACKEND, SbldmPaths, move_aside, read_json, sbldm_paths
from components.sbldm.vae import SliceVAE, build_vae
from components.seeds import derive_seed
from components.synthesis.data import TrainingSet, n_condition_channels, prepare_training_set, spacing_of
from components.synthesis.training import NullTracker, ema_decay_at, training_statistics, update_ema
from data_catalog import MODALITIES, Dataset, LabelScheme, code_version, has_file, open_dataset

log = logging.getLogger(__name__)
EXPERIMENT = "synthesizer"
LOG_FIELDS = {"vae": ("step", "loss", "l1", "seg", "kl", "elapsed_s"), "diffusion": ("step", "loss", "elapsed_s")}


def _write_log(path: Path, stage: str, rows: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOG_FIELDS[stage], lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: int(r[k]) if k == "step" else repr(float(r[k])) for k in LOG_FIELDS[stage]})
    write_text_atomic(path, buf.getvalue())


def _save(path: Path, blob: dict[str, Any]) -> None:
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(blob, tmp)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def _autocast(cfg: SbldmConfig, device: torch.device):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.amp and device.type == "cuda")


def flip_variants(cfg: SbldmConfig) -> list[tuple[int, ...]]:
    """The flips the diffusion stage learns: none, and each non-empty subset of data.flip_axes when flips are on."""
    out: list[tuple[int, ...]] = [()]
    for a in (cfg.data.flip_axes if cfg.data.flip_prob > 0 else ()):
        out += [(*v, a) for v in out]
    return out


def kl_loss(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma) || N(0, 1)) summed over the latent of a slice, mean over the slices."""
    return (0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2)) - 1)).flatten(1).sum(1).mean()


# --------------------------------------------------------------------------- the VAE stage
def draw_slices(ts: TrainingSet, cfg: SbldmConfig, n_classes: int, generator: torch.Generator
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``vae_train.batch_size`` random axial slices (random case, flip, slice): (input (N, 4 + K, X, Y),
    labels (N, X, Y) long, normalised positions (N,))."""
    n = cfg.vae_train.batch_size
    Z = cfg.data.shape[2]
    idx = torch.randint(len(ts), (n,), generator=generator).tolist()
    flips = (torch.rand(n, len(cfg.data.flip_axes), generator=generator) < cfg.data.flip_prob).tolist()
    zs = torch.randint(Z, (n,), generator=generator).tolist()
    imgs, labs = [], []
    for i, f, z in zip(idx, flips, zs, strict=True):
        img, lab = ts.get(i)
        img, lab = img[..., z], lab[..., z]
        axes = [a for a, do in zip(cfg.data.flip_axes, f, strict=True) if do]
        if axes:
            img, lab = np.flip(img, [a + 1 for a in axes]), np.flip(lab, axes)
        imgs.append(torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)))
        labs.append(torch.from_numpy(np.ascontiguousarray(lab)).long())
    image, labels = torch.stack(imgs), torch.stack(labs)
    x = torch.cat([image, F.one_hot(labels, n_classes).permute(0, 3, 1, 2).float()], dim=1)
    return x, labels, SliceVAE.positions(Z)[torch.tensor(zs)]


def train_vae(vae: SliceVAE, ts: TrainingSet, cfg: SbldmConfig, n_classes: int, device: torch.device, tracker: Any,
              log_path: Path, progress: bool | None = None) -> list[dict[str, float]]:
    from monai.losses import DiceCELoss

    st = cfg.vae_train
    data_gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "vae", "data"))
    noise_gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "vae", "noise"))
    seg_loss = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    opt = torch.optim.AdamW(vae.parameters(), lr=st.lr)
    rows: list[dict[str, float]] = []
    t0 = time.perf_counter()
    vae.train()
    for step in tqdm(range(1, st.steps + 1), desc="sbldm VAE", unit="step", disable=None if progress is None else not progress):
        x, labels, pos = draw_slices(ts, cfg, n_classes, data_gen)
        x, labels, pos = x.to(device), labels.to(device), pos.to(device)
        eps = torch.randn(x.shape[0], cfg.vae.latent_channels, *(s // cfg.vae.factor for s in x.shape[2:]),
                          generator=noise_gen).to(device)
        with _autocast(cfg, device):
            mu, sigma = vae.encode(x, pos)
            img, logits = vae.decode(mu + sigma * eps, pos)
        l1 = (img.float() - x[:, :4]).abs().mean()
        seg = seg_loss(logits.float(), labels[:, None])
        kl = kl_loss(mu.float(), sigma.float())
        loss = cfg.vae_loss.l1 * l1 + cfg.vae_loss.seg * seg + cfg.vae_loss.kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % st.log_every == 0 or step == st.steps:
            r = {"step": step, "loss": loss.item(), "l1": l1.item(), "seg": seg.item(), "kl": kl.item(),
                 "elapsed_s": time.perf_counter() - t0}
            rows.append(r)
            tracker.log_metrics({f"vae_{k}": v for k, v in r.items() if k not in ("step", "elapsed_s")}, step=step)
    _write_log(log_path, "vae", rows)
    vae.eval()
    return rows


@torch.no_grad()
def encode_training_set(vae: SliceVAE, ts: TrainingSet, scheme: LabelScheme, cfg: SbldmConfig, n_classes: int,
                        device: torch.device, progress: bool | None = None) -> dict[str, Any]:
    """Unscaled posterior means (V, L, x, y, Z) and features of every training case and flip variant, the mask
    Dice of the reconstruction and its image L1 inside the head (unflipped cases)."""
    lat, feats, first = [], [], []
    l1s, dices = [], []
    for i in tqdm(range(len(ts)), desc="encode training cases", unit="case", disable=None if progress is None else not progress):
        img, lab = ts.get(i)
        spacing = spacing_of(ts.affine(i))
        for v in flip_variants(cfg):
            im = np.flip(img, [a + 1 for a in v]) if v else img
            lb = np.flip(lab, list(v)) if v else lab
            x = torch.cat([torch.from_numpy(np.ascontiguousarray(im, dtype=np.float32)),
                           F.one_hot(torch.from_numpy(np.ascontiguousarray(lb)).long(), n_classes).permute(3, 0, 1, 2).float()])
            with _autocast(cfg, device):
                z = vae.encode_volume(x[None].to(device)).float() / vae.scale_factor
            lat.append(z[0].cpu())
            seg, _ = seg_from_labels(lb, scheme)
            feats.append(measure(seg, cfg.features, scheme, spacing))
            first.append(not v)
            if not v:
                with _autocast(cfg, device):
                    rec, logits = vae.decode_volume(z * vae.scale_factor)
                head = lab >= 1
                l1s.append(float(np.abs(rec[0].float().cpu().numpy() - img)[:, head].mean()))
                pred = logits[0].argmax(0).cpu().numpy()
                tum_p, tum_t = pred >= 2, lab >= 2
                dices.append(2 * float((tum_p & tum_t).sum()) / max(float(tum_p.sum() + tum_t.sum()), 1.0))
    latents = torch.stack(lat)
    return {"latents": latents, "features": feats, "unflipped": first, "std": float(latents.std()),
            "recon_l1_head": float(np.mean(l1s)), "recon_tumour_dice": float(np.mean(dices))}


# --------------------------------------------------------------------------- the diffusion stage
def _read_log(path: Path, upto: int) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with open(path, encoding="utf-8", newline="") as fh:
        return [r for r in ({k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)) if r["step"] <= upto]


def _diffusion_checkpoint(paths: SbldmPaths, digest: str, steps: int) -> tuple[int, dict[str, Any] | None]:
    """The newest diffusion checkpoint written under these settings (step, blob), else (0, None)."""
    existing = paths.list_checkpoints()
    if not existing:
        return 0, None
    step, path = existing[-1]
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if blob.get("config_sha256") != digest or step > steps:
        log.info("the diffusion checkpoints in %s belong to other settings: the stage starts again", paths.checkpoints)
        for _, old in existing:
            old.unlink(missing_ok=True)
        return 0, None
    log.info("resuming the sbldm diffusion stage from step %d (%s)", step, path.name)
    return step, blob


def train_diffusion(unet: torch.nn.Module, latents: torch.Tensor, features: torch.Tensor, cfg: SbldmConfig,
                    device: torch.device, tracker: Any, paths: SbldmPaths, resume: bool = False,
                    progress: bool | None = None) -> tuple[torch.nn.Module, list[dict[str, float]], int]:
    """DDPM loss on the scaled latents (target: the noise, or v for ``prediction_type: v_prediction``); the
    features of a draw are dropped (null embedding) with probability ``condition_dropout``. Checkpoints every
    ``checkpoint_every`` steps; ``resume`` continues from the newest one of the same settings. Returns the
    weights to sample with (the EMA when on), the loss log and the step it started from."""
    st = cfg.diffusion_train
    digest = cfg.stage_digest("diffusion")
    sched = build_scheduler(cfg.diffusion, "ddpm")
    gens = {k: torch.Generator().manual_seed(derive_seed(cfg.seed, "diffusion", k)) for k in ("data", "noise")}
    opt = torch.optim.AdamW(unet.parameters(), lr=st.lr)
    ema = copy.deepcopy(unet).eval() if st.ema_decay is not None else None
    start, blob = _diffusion_checkpoint(paths, digest, st.steps) if resume else (0, None)
    if not resume:
        for _, old in paths.list_checkpoints():
            old.unlink(missing_ok=True)
    if blob is not None:
        unet.load_state_dict(blob["unet"])
        opt.load_state_dict(blob["opt"])
        if ema is not None:
            ema.load_state_dict(blob["ema"])
        for k, g in gens.items():
            g.set_state(blob[f"rng_{k}"])
    rows = _read_log(paths.log("diffusion"), start) if start else []
    elapsed0 = rows[-1]["elapsed_s"] if rows else 0.0
    t0 = time.perf_counter()
    unet.train()
    for step in tqdm(range(start + 1, st.steps + 1), desc="sbldm diffusion", unit="step", initial=start,
                     total=st.steps, disable=None if progress is None else not progress):
        idx = torch.randint(len(latents), (st.batch_size,), generator=gens["data"])
        x0, f = latents[idx].to(device), features[idx].to(device)
        noise = torch.randn(x0.shape, generator=gens["noise"]).to(device)
        t = torch.randint(cfg.diffusion.num_train_timesteps, (st.batch_size,), generator=gens["noise"]).to(device)
        drop = (torch.rand(st.batch_size, generator=gens["noise"]) < st.condition_dropout).to(device)
        with _autocast(cfg, device):
            pred = unet(sched.add_noise(x0, noise, t), t, f, drop)
        loss = F.mse_loss(pred.float(), diffusion_target(sched, x0, noise, t))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema is not None:
            update_ema(ema, unet, ema_decay_at(float(st.ema_decay), step))
        if step % st.log_every == 0 or step == st.steps:
            r = {"step": step, "loss": loss.item(), "elapsed_s": elapsed0 + time.perf_counter() - t0}
            rows.append(r)
            tracker.log_metrics({"diffusion_loss": r["loss"]}, step=step)
        if step % st.checkpoint_every == 0 and step < st.steps:
            # the log first: a run killed between the two resumes from the previous checkpoint and cuts the log there
            _write_log(paths.log("diffusion"), "diffusion", rows)
            paths.checkpoints.mkdir(parents=True, exist_ok=True)
            _save(paths.checkpoint(step), {"unet": _state(unet), "ema": _state(ema) if ema is not None else {},
                                           "opt": opt.state_dict(), "step": step, "config_sha256": digest,
                                           **{f"rng_{k}": g.get_state() for k, g in gens.items()}})
            for _, old in paths.list_checkpoints()[:-st.keep_checkpoints]:
                old.unlink(missing_ok=True)
    _write_log(paths.log("diffusion"), "diffusion", rows)
    out = ema if ema is not None else unet
    return out.eval(), rows, start


# --------------------------------------------------------------------------- entry point
def train_sbldm(workspace: str | Path, dataset: str, name: str, cfg: SbldmConfig, *,
                resume: bool | Literal["auto"] = False, track: bool = True, progress: bool | None = None) -> ModelSummary:
    """Train model ``name`` on the train split of ``dataset``; one MLflow run if ``track``."""
    ds = open_dataset(workspace, dataset)
    paths = sbldm_paths(workspace, name)
    if resume == "auto":  # the pipeline's policy: reuse a finished VAE of the same settings and cases, else start anew
        resume = _auto_resume(paths, cfg, ds)
    if not track:
        return _train(ds, paths, name, cfg, bool(resume), NullTracker(), progress)
    from components.tracking import start_run

    tags = {"stage": "synthesizer", "model": name, "dataset": dataset, "profile": cfg.profile, "resume": resume,
            "backend": BACKEND}
    with start_run(workspace, EXPERIMENT, run_name=f"train {name}", tags=tags) as run:
        run.log_params({"backend": BACKEND})
        out = _train(ds, paths, name, cfg, bool(resume), run, progress)
        out.run_id = run.run_id
        return out


def _auto_resume(paths: SbldmPaths, cfg: SbldmConfig, ds: Dataset) -> bool:
    """Keep the model folder when its VAE has these settings, this dataset and these cases; else move it aside
    to ``<name>.replaced-<UTC time>`` (never deleted) so that a new model starts."""
    if not paths.root.exists():
        return False
    try:
        prev = read_json(paths.config) if paths.config.is_file() else {}
    except (OSError, ValueError) as err:  # unreadable: not ours to continue
        log.info("model %s: cannot read its card (%s)", paths.root.name, err)
        prev = {}
    if (prev.get("dataset") == ds.name and prev.get("dataset_manifest_sha256") == ds.manifest_digest
            and prev.get("stage_sha256", {}).get("vae") == cfg.stage_digest("vae")):
        return True
    aside = move_aside(paths)
    log.warning("model %s was trained with other settings or on other cases: moved to %s, training a new one",
                paths.root.name, aside)
    return False


def _summary(paths: SbldmPaths, name: str, card: dict[str, Any], t_call: float, note: str = "") -> ModelSummary:
    return ModelSummary(name=name, model_dir=paths.root, seconds=time.perf_counter() - t_call,
                        train_seconds=float(sum(s.get("seconds", 0.0) for s in card.get("stages", {}).values())),
                        note=note or f"sbldm on {card.get('dataset')}, {len(card.get('train_cases', []))} cases")


def _train(ds: Dataset, paths: SbldmPaths, name: str, cfg: SbldmConfig, resume: bool, tracker: Any,
           progress: bool | None) -> ModelSummary:
    t_call = time.perf_counter()
    prev = read_json(paths.config) if paths.config.is_file() else {}
    if (prev.get("stage_sha256", {}).get("diffusion") == cfg.stage_digest("diffusion") and prev.get("dataset") == ds.name
            and prev.get("dataset_manifest_sha256") == ds.manifest_digest
            and prev.get("stages", {}).get("diffusion", {}).get("done") is True and paths.diffusion.is_file()):
        if prev.get("config") != cfg.model_dump(mode="json"):  # settings the weights do not depend on (sample, generate)
            prev = {**prev, "config": cfg.model_dump(mode="json"),
                    "updated": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
            write_json_atomic(paths.config, prev)
        done = _summary(paths, name, prev, t_call, note="already trained with these settings")
        done.montage = paths.root / "size_sweep.png" if (paths.root / "size_sweep.png").is_file() else None
        return done
    if (paths.vae.is_file() or paths.diffusion.is_file()) and not resume:
        raise SbldmError(f"model {name!r} already has weights in {paths.root}: pass --resume to continue it (a finished "
                         f"VAE of the same settings is kept), or choose another --name")
    scheme = ds.label_scheme
    ok = ds.ok_cases("train")
    cases = ok[[has_file(r, "seg") and all(has_file(r, m) for m in MODALITIES) for r in ok.to_dict("records")]]
    if cases.empty:
        raise SbldmError(f"dataset {ds.name!r} has no ok train case with four modalities and a seg: sbldm learns "
                         f"images and masks together")
    paths.root.mkdir(parents=True, exist_ok=True)
    if remove_stale_temp(paths.root):
        log.info("model %s: removed temporary files of an interrupted run", name)
    ts = prepare_training_set(ds, cases, cfg.data, scheme, paths.cache, progress=progress)
    stats = training_statistics(ts, cfg)  # type: ignore[arg-type]
    write_json_atomic(paths.stats, stats)
    device = resolve_device(cfg.device, "sbldm synthesizer")
    n_classes = n_condition_channels(scheme)
    columns = feature_columns(cfg.features, scheme)
    seeds = {"config": cfg.seed, "init": derive_seed(cfg.seed, "init"),
             **{f"{s}_{k}": derive_seed(cfg.seed, s, k) for s in ("vae", "diffusion") for k in ("data", "noise")}}
    card: dict[str, Any] = {
        "name": name, "backend": BACKEND, "config": cfg.model_dump(mode="json"),
        "stage_sha256": {s: cfg.stage_digest(s) for s in ("vae", "diffusion")},
        "dataset": ds.name, "dataset_manifest_sha256": ds.manifest_digest,
        "train_cases": cases["case_id"].tolist(), "label_scheme": scheme.name, "modalities": list(MODALITIES),
        "n_classes": n_classes, "feature_columns": columns, "seeds": seeds, "device": str(device),
        "stages": {}, "code_version": code_version(),
    }
    tracker.log_params({"config": cfg.model_dump(mode="json"), "dataset": ds.name, "n_train_cases": len(ts)})
    reuse = bool(resume and paths.vae.is_file() and prev.get("stages", {}).get("vae", {}).get("done") is True
                 and prev.get("stage_sha256", {}).get("vae") == cfg.stage_digest("vae") and prev.get("dataset") == ds.name)
    blob = torch.load(paths.vae, map_location="cpu", weights_only=True) if reuse else {}
    reuse = reuse and blob.get("config_sha256") == cfg.stage_digest("vae")
    if reuse:
        card["stages"]["vae"] = prev["stages"]["vae"]
        if prev.get("dataset_manifest_sha256") != ds.manifest_digest:
            log.warning("dataset %s changed since model %s's VAE was trained; keeping it", ds.name, name)
    write_json_atomic(paths.config, card)  # no stage of a killed run is ever taken as done

    # --- stage 1: the slice VAE
    with torch.random.fork_rng(devices=[]):  # module initialisation from the recorded seed, global RNG untouched
        torch.manual_seed(seeds["init"])
        vae = build_vae(cfg.vae, n_classes).to(device)
    t0 = time.perf_counter()
    if reuse:
        vae.load_state_dict(blob["vae"])
        vae.scale_factor.fill_(1.0)
        vae.eval()
    else:
        rows = train_vae(vae, ts, cfg, n_classes, device, tracker, paths.log("vae"), progress)
        card["stages"]["vae"] = {"done": True, "steps": cfg.vae_train.steps, "seconds": time.perf_counter() - t0,
                                 "final_loss": rows[-1]["loss"] if rows else None}
    enc = encode_training_set(vae, ts, scheme, cfg, n_classes, device, progress)
    scale = 1.0 / max(enc["std"], 1e-8)
    vae.scale_factor.fill_(scale)
    _save(paths.vae, {"vae": _state(vae), "step": cfg.vae_train.steps, "scale_factor": scale,
                      "config_sha256": cfg.stage_digest("vae")})
    card["stages"]["vae"].update(latent_std=enc["std"], recon_l1_head=enc["recon_l1_head"],
                                 recon_tumour_dice=enc["recon_tumour_dice"])
    card["scale_factor"] = scale
    card["scale_factor_source"] = "1 / std of the VAE's posterior means over all training cases (and their flips)"
    tracker.log_metrics({"vae_recon_l1_head": enc["recon_l1_head"], "vae_recon_tumour_dice": enc["recon_tumour_dice"],
                         "scale_factor": scale})
    write_json_atomic(paths.config, card)  # the finished VAE: a run killed in the diffusion stage resumes from here

    # --- stage 2: the feature-conditioned diffusion U-Net on the stacked latents
    norm = FeatureNorm.fit([f for f, u in zip(enc["features"], enc["unflipped"], strict=True) if u], columns)
    card["feature_norm"] = norm.to_dict()
    card["feature_norm_source"] = "mean and std of each feature over the unflipped training cases, on the model grid"
    feats = torch.from_numpy(np.stack([norm.normalise(f) for f in enc["features"]]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seeds["init"])
        unet = build_unet(cfg.unet, cfg.vae.latent_channels, len(columns)).to(device)
    t0 = time.perf_counter()
    # checkpoints continue only on a reused VAE: a retrained one may encode differently (GPU kernels)
    unet, rows, start = train_diffusion(unet, enc["latents"] * scale, feats, cfg, device, tracker, paths,
                                        resume=reuse, progress=progress)
    _save(paths.diffusion, {"unet": _state(unet), "step": cfg.diffusion_train.steps, "feature_norm": norm.to_dict(),
                            "scale_factor": scale, "config_sha256": cfg.stage_digest("diffusion")})
    for _, done in paths.list_checkpoints():  # the finished stage is diffusion.pt
        done.unlink(missing_ok=True)
    if paths.checkpoints.is_dir() and not any(paths.checkpoints.iterdir()):
        paths.checkpoints.rmdir()
    card["stages"]["diffusion"] = {"done": True, "steps": cfg.diffusion_train.steps, "resumed_from_step": start,
                                   "seconds": (rows[-1]["elapsed_s"] if rows else 0.0) or time.perf_counter() - t0,
                                   "final_loss": rows[-1]["loss"] if rows else None,
                                   "n_parameters": int(sum(p.numel() for p in unet.parameters()))}
    card["updated"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    write_json_atomic(paths.config, card)
    sweep = _size_sweep(paths, name)
    for p in (paths.config, paths.log("vae"), paths.log("diffusion"), sweep):
        if p is not None and p.is_file():
            tracker.log_artifact(p)
    out = _summary(paths, name, card, t_call)
    out.montage = sweep
    return out


def _size_sweep(paths: SbldmPaths, name: str) -> Path | None:
    """The trained model's size-sweep montage (``size_sweep.png``): small to large whole tumour at one centre."""
    from components.sbldm.sampling import size_sweep_montage

    try:
        return size_sweep_montage(paths.root.parents[1], name, progress=False)
    except (ImportError, OSError, RuntimeError, ValueError) as err:  # a figure never fails a finished training
        log.warning("model %s: size-sweep montage not drawn (%s)", name, err)
        return None
