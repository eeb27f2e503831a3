"""Sampling the ldm synthesizer, and the synthetic dataset it writes.

The loop is MONAI's ``LatentDiffusionInferer.sample`` written out: the noisy latent and the mask on the
latent grid are concatenated at every step, and the final latent is decoded as ``decode(z / scale_factor)``
with the model's stored factor (the bundle's sampler decodes ``z`` as it is). It is written out because
the inferer's loop cannot pass a ``torch.Generator`` per volume to the scheduler's step, so a stochastic
step would draw from the global RNG and a seed would not fix the sample.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from components.ldm.config import LatentDiffusionConfig, LdmError
from components.ldm.networks import build_scheduler, latent_condition
from components.ldm.store import TrainedLdm, load_trained_ldm
from components.progress import tqdm
from components.synthesis.config import SynthesizeConfig
from components.synthesis.data import FittedCase, condition_labels, denormalise, fit_case, head_method, load_case
from components.synthesis.quality import quality_score
from components.synthesis.sampling import make_generator, resolve_sampling, resolve_steps
from components.synthesis.writer import case_seed, register_synthetic, synthesis_montage, write_synthetic_case
from data_catalog import (
    MODALITIES,
    STATUS_OK,
    CatalogError,
    dataset_dir,
    has_file,
    open_dataset,
    quarantine_row,
    text_of,
)

log = logging.getLogger(__name__)
FILE_KEYS = (*MODALITIES, "seg", "head")


@torch.no_grad()
def sample_latents(unet: torch.nn.Module, cond: torch.Tensor, latent_channels: int, diffusion: LatentDiffusionConfig,
                   generators: list[torch.Generator], sampler: str = "ddim", steps: int = 50, eta: float = 0.0,
                   amp: bool = True, progress: bool | None = None) -> torch.Tensor:
    """B scaled latents (B, latent_channels, x, y, z) for B masks on the latent grid ``cond`` (B, C, x, y, z).

    generators: one per volume, on the U-Net's device; they fix the initial noise and every step's noise.
    """
    device = next(unet.parameters()).device
    B = cond.shape[0]
    if len(generators) != B:
        raise LdmError(f"need one generator per volume: {B} volumes, {len(generators)} generators")
    n = resolve_steps(diffusion, sampler, steps, steps)
    scheduler = build_scheduler(diffusion, sampler)
    scheduler.set_timesteps(n)
    cond = cond.to(device)
    z = torch.stack([torch.randn((latent_channels, *cond.shape[2:]), generator=g, device=device) for g in generators])
    use_amp = amp and device.type == "cuda"
    unet.eval()
    for t in tqdm(scheduler.timesteps.tolist(), desc=f"{sampler} {n} steps", unit="step", leave=False,
                  disable=None if progress is None else not progress):
        tt = torch.full((B,), int(t), device=device, dtype=torch.long)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            eps = unet(torch.cat([z, cond], dim=1), timesteps=tt).float()
        if sampler == "ddim" and eta == 0.0:
            z, _ = scheduler.step(eps, int(t), z, eta=0.0)
            continue
        out = []
        for i in range(B):  # one generator per volume: the noise does not depend on the batch
            kw = {"eta": eta} if sampler == "ddim" else {}
            zi, _ = scheduler.step(eps[i:i + 1], int(t), z[i:i + 1], generator=generators[i], **kw)
            out.append(zi)
        z = torch.cat(out)
    return z


@torch.no_grad()
def decode_latents(autoencoder: torch.nn.Module, z: torch.Tensor, scale_factor: float, amp: bool = True) -> torch.Tensor:
    """Images (B, 4, X, Y, Z) in [-1, 1] on the CPU from scaled latents: ``decode(z / scale_factor)``."""
    device = next(autoencoder.parameters()).device
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
        x = autoencoder.decode(z.to(device) / scale_factor)
    return x.float().clamp(-1.0, 1.0).cpu()


def generate(model: TrainedLdm, labels: torch.Tensor, generators: list[torch.Generator], sampler: str = "ddim",
             steps: int = 50, eta: float = 0.0, progress: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (B, 4, X, Y, Z) in [-1, 1], scaled latents) for conditioning label maps (B, X, Y, Z) on the model grid."""
    cfg = model.config
    cond = latent_condition(labels.long(), model.n_condition, cfg.autoencoder.factor)
    z = sample_latents(model.unet, cond, cfg.autoencoder.latent_channels, cfg.diffusion, generators, sampler, steps,
                       eta, cfg.amp, progress)
    return decode_latents(model.autoencoder, z, model.scale_factor, cfg.amp), z.cpu()


# --------------------------------------------------------------------------- the synthetic dataset
@dataclass
class LdmSynthesisSummary:
    name: str
    model: str
    masks: str
    sampler: str
    steps: int
    n_cases: int
    n_ok: int
    n_quarantined: int
    n_written: int
    n_reused: int
    seconds: float
    seconds_per_volume: float
    path: Path
    montage: Path | None

    def line(self) -> str:
        return (f"{self.name}: {self.n_ok} synthetic cases ({self.n_written} new, {self.n_reused} kept, "
                f"{self.n_quarantined} quarantined) from ldm model {self.model} on masks {self.masks}, "
                f"{self.sampler} {self.steps} steps, {self.seconds_per_volume:.1f} s/volume, {self.seconds:.1f} s "
                f"-> {self.path}")


def _source_case(row: pd.Series) -> str:
    return text_of(row, "source_case") or str(row["case_id"])


def _reuse(cases_dir: Path, case_id: str, fingerprint: str) -> dict[str, Any] | None:
    f = cases_dir / case_id / "row.json"
    try:
        prev = json.loads(f.read_text(encoding="utf-8")) if f.is_file() else None
    except (OSError, ValueError):
        return None
    if prev is None or prev.get("fingerprint") != fingerprint:
        return None
    return prev if all((cases_dir.parent / prev.get(k, "")).is_file() for k in FILE_KEYS) else None


def _write(tm: TrainedLdm, cases_dir: Path, case_id: str, row: pd.Series, mask_case: str, seed: int, fc: FittedCase,
           x: np.ndarray, params: str, fingerprint: str) -> dict[str, Any]:
    """x: (4, *model shape) in [-1, 1] -> intensities on the mask's own grid, written as one case."""
    score = quality_score(x, fc.seg, fc.head, tm.scheme, tm.stats["quality_reference"])
    norm = tm.stats["normalisation"]
    lo = np.array([norm["lo"][m] for m in MODALITIES])
    hi = np.array([norm["hi"][m] for m in MODALITIES])
    # back onto the mask's grid; the extra channel marks the model window (0 where it was padded back)
    back = fc.to_grid(np.concatenate([x + 1.0, np.ones((1, *x.shape[1:]), np.float32)]))
    images = denormalise(back[:-1] - 1.0, fc.grid_head & (back[-1] > 0.5), lo, hi)
    if str(tm.stats.get("dtype", "float32")).startswith(("int", "uint")):
        images = np.clip(np.rint(images), 0, np.iinfo(np.int16).max).astype(np.int16)
    channels = {m: images[c] for c, m in enumerate(MODALITIES)}
    return write_synthetic_case(cases_dir, case_id, channels, fc.grid_seg, fc.grid_head, fc.grid_affine, mask_row=row,
                                mask_case=mask_case, seed=seed, params=params, model_digest=tm.digest,
                                quality_score=float(score), fingerprint=fingerprint)


def synthesize_dataset(workspace: str | Path, model: str, masks: str, name: str, config: SynthesizeConfig | None = None,
                       progress: bool | None = None) -> LdmSynthesisSummary:
    """``config.samples_per_mask`` cases per ok mask of ``masks`` from ldm ``model``; registers dataset ``name``."""
    cfg = config or SynthesizeConfig()
    t0 = time.perf_counter()
    tm = load_trained_ldm(workspace, model, cfg.device)
    mds = open_dataset(workspace, masks)
    if name == masks:
        raise LdmError(f"--name {name!r} is the masks dataset itself; choose another name for the output")
    if mds.info.get("label_scheme") != tm.scheme.name:
        raise LdmError(f"masks dataset {masks!r} uses label scheme {mds.info.get('label_scheme')!r} but model {model!r} "
                       f"was trained with {tm.scheme.name!r}; use masks in the model's scheme")
    cfg = resolve_sampling(cfg, tm.config)  # unset sampler/steps/eta/batch: the profile's sample block
    if cfg.sampler not in ("ddim", "ddpm"):
        raise LdmError(f"ldm model {model!r}: sampler {cfg.sampler!r} is not available for ldm; expected ddim or ddpm")
    ok = mds.ok_cases()
    if ok.empty:
        raise LdmError(f"masks dataset {masks!r} has no ok cases")
    cases_dir = dataset_dir(workspace, name) / "cases"
    base = {"backend": "ldm", "sampler": cfg.sampler, "steps": cfg.steps, "eta": cfg.eta, "model": tm.name,
            "model_step": tm.step, "scale_factor": tm.scale_factor, "device": str(tm.device)}
    rows: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    n_written = n_reused = 0
    t_sampling = 0.0
    bar = tqdm(total=len(ok) * cfg.samples_per_mask, desc=f"synthesize {name}", unit="volume",
               disable=None if progress is None else not progress)
    for _, r in ok.iterrows():
        mcase = str(r["case_id"])
        digest = {k: str(r.get(f"sha256_{k}", "")) for k in ("seg", "head", *MODALITIES) if has_file(r, k)}
        fitted: FittedCase | None = None
        labels: np.ndarray | None = None
        error = ""
        for k in range(cfg.samples_per_mask):
            cid, seed = f"{mcase}-syn{k}", case_seed(cfg.seed, mcase, k)
            order.append(cid)
            params = {**base, "sample_index": k}
            key = {"model": tm.digest, "mask": digest, "head": head_method(), "sampler": cfg.sampler, "steps": cfg.steps,
                   "eta": cfg.eta, "seed": seed, "data": tm.config.data.model_dump(mode="json"), "v": 1}
            fp = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
            prev = _reuse(cases_dir, cid, fp)
            if prev is not None:
                rows[cid] = prev
                n_reused += 1
                bar.update(1)
                continue
            if fitted is None and not error:
                try:
                    c = load_case(mds, r, with_images=False)
                    fitted = fit_case(None, c["seg"], c["head"], c["affine"], tm.config.data)
                    if fitted.lost_tumour_voxels:
                        raise LdmError(f"{fitted.lost_tumour_voxels} tumour voxels fall outside the model window "
                                       f"{tm.config.data.shape}: the mask's head is larger than the model grid")
                    labels = condition_labels(fitted.seg, fitted.head, tm.scheme, where=f"masks {masks!r}, case {mcase}")
                except (LdmError, CatalogError, OSError, ValueError, KeyError) as err:
                    error = f"mask case {mcase}: {err}"
            if error:
                rows[cid] = quarantine_row(
                    cid, error, str(r.get("split", "")), file_keys=FILE_KEYS, has_seg=False, shape=None, spacing=None,
                    orientation="", labels=[], source_case=_source_case(r), mask_case=mcase, seed=seed,
                    params=json.dumps(params, sort_keys=True), model_digest=tm.digest, quality_score=math.nan,
                    fingerprint=fp)
                bar.update(1)
                continue
            ts = time.perf_counter()
            x, _ = generate(tm, torch.from_numpy(labels)[None].long(), [make_generator(seed, tm.device)], cfg.sampler,
                            cfg.steps, cfg.eta if cfg.eta is not None else 0.0)
            t_sampling += time.perf_counter() - ts
            params.update(resampled=fitted.resampled, lost_head_voxels=fitted.lost_head_voxels)
            rows[cid] = _write(tm, cases_dir, cid, r, mcase, seed, fitted, x[0].numpy(),
                               json.dumps(params, sort_keys=True), fp)
            n_written += 1
            bar.update(1)
    bar.close()
    manifest = pd.DataFrame([rows[c] for c in order])
    out = register_synthetic(
        workspace, name, manifest, mds, label_scheme=tm.scheme.name,
        config={**cfg.model_dump(mode="json"), "backend": "ldm", "scale_factor": tm.scale_factor},
        model=model, model_digest=tm.digest, generator_dataset=tm.card.get("dataset"),
        generator_train_cases=tm.card.get("train_cases"), synthesizer="ldm",
        note="Synthetic cases from a mask-conditioned 3-D latent diffusion model (ldm backend); quality_score ranks "
             "them (1 = tissue statistics of the training data).",
        model_step=tm.step, model_profile=tm.config.profile, sampler=cfg.sampler, steps=cfg.steps, eta=cfg.eta,
        backend="ldm", scale_factor=tm.scale_factor,
    )
    montage = synthesis_montage(out, mds, n_cases=cfg.montage_cases) if cfg.montage_cases else None
    n_ok = int((manifest["status"] == STATUS_OK).sum())
    return LdmSynthesisSummary(
        name=name, model=model, masks=masks, sampler=str(cfg.sampler), steps=int(cfg.steps), n_cases=len(manifest),
        n_ok=n_ok, n_quarantined=len(manifest) - n_ok, n_written=n_written, n_reused=n_reused,
        seconds=time.perf_counter() - t0, seconds_per_volume=t_sampling / n_written if n_written else 0.0,
        path=out.root, montage=montage)
