"""Sampling sbldm, and the synthetic dataset it writes: image AND mask per requested feature vector.

Requests come from a masks dataset (each ok mask row: its features, measured with ``mask_features`` on the
model grid, are what is asked for, and its ``source_case`` links the synthetic case to the real case those
features come from) or from a CSV table of features (``generate.features_csv``; one row per request with a
``source_case`` column). The generated mask (the VAE's mask head, arg-max over background / head / tumour
labels, mapped to the dataset's label scheme) is the case's seg and head. Each generated mask is measured
again (controllability: ``ctrl_err_<feature>`` columns, mean per feature in dataset.json) and checked with
``components.masks.checks.check_mask`` against the requested mask, as mask augmentation checks its masks;
a failing one is quarantined with the reasons.

The DDIM loop (eta 0) is written out in ``components.sbldm.diffusion.ddim_sample`` because guidance needs
two U-Net calls per step and the initial noise comes from one ``torch.Generator`` per volume.
"""

from __future__ import annotations

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

from components.masks.checks import check_mask, mask_reference
from components.masks.config import CheckConfig
from components.progress import tqdm
from components.sbldm.config import SbldmError
from components.sbldm.diffusion import ddim_sample
from components.sbldm.features import (
    control_errors,
    measure,
    seg_from_labels,
    summarise,
)
from components.sbldm.store import BACKEND, TrainedSbldm, load_trained_sbldm
from components.synthesis.config import SynthesizeConfig
from components.synthesis.data import FittedCase, denormalise, fit_case, load_case, spacing_of
from components.synthesis.quality import quality_score
from components.synthesis.sampling import make_generator
from components.synthesis.writer import case_seed, register_synthetic, synthesis_montage, write_synthetic_case
from data_catalog import (
    MODALITIES,
    STATUS_OK,
    CatalogError,
    Dataset,
    dataset_dir,
    open_dataset,
    quarantine_row,
    text_of,
)

log = logging.getLogger(__name__)
FILE_KEYS = (*MODALITIES, "seg", "head")


# --------------------------------------------------------------------------- generation
@torch.no_grad()
def generate(tm: TrainedSbldm, features: torch.Tensor | None, generators: list[torch.Generator], steps: int | None = None,
             guidance_scale: float | None = None, progress: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (B, 4, X, Y, Z) in [-1, 1], label maps (B, X, Y, Z): 0 background, 1 head, 2.. tumour labels) on
    the model grid for B normalised feature vectors (B, F) (None: unconditional, B = len(generators))."""
    cfg = tm.config
    z = ddim_sample(tm.unet, features, cfg.latent_shape, cfg.vae.latent_channels, cfg.diffusion, generators,
                    steps or cfg.sample.steps, cfg.sample.guidance_scale if guidance_scale is None else guidance_scale,
                    cfg.amp, progress)
    with torch.autocast(device_type=tm.device.type, dtype=torch.bfloat16, enabled=cfg.amp and tm.device.type == "cuda"):
        img, logits = tm.vae.decode_volume(z)
    return img.float().clamp(-1.0, 1.0).cpu(), logits.float().argmax(1).to(torch.uint8).cpu()


# --------------------------------------------------------------------------- requests
@dataclass
class Request:
    mask_case: str         # the mask (or CSV request) the case answers
    row: pd.Series         # carries split and source_case for the writer
    features: dict[str, float]
    fitted: FittedCase     # the output grid (the mask's, or the source case's for a CSV request)
    window: np.ndarray     # model-grid voxels that map back onto the output grid (False: padding)


def _fit(ds: Dataset, row: pd.Series, tm: TrainedSbldm, where: str) -> tuple[FittedCase, np.ndarray]:
    """The case fitted onto the model grid, and the model-grid window that maps back onto its output grid
    (fitting an all-ones volume of the output grid the same way: padding comes out 0)."""
    c = load_case(ds, row, with_images=False)
    fc = fit_case(None, c["seg"], c["head"], c["affine"], tm.config.data)
    if fc.lost_tumour_voxels:
        raise SbldmError(f"{where}: {fc.lost_tumour_voxels} tumour voxels fall outside the model window "
                         f"{tm.config.data.shape}: the head is larger than the model grid")
    ones = fit_case(None, np.ones(fc.grid_seg.shape, np.uint8), fc.grid_head, fc.grid_affine, tm.config.data)
    return fc, ones.seg > 0


def mask_requests(tm: TrainedSbldm, mds: Dataset) -> list[Request | tuple[pd.Series, str]]:
    """One request per ok mask: its features on the model grid; (row, error) for a mask that cannot be read."""
    out: list[Request | tuple[pd.Series, str]] = []
    for _, r in mds.ok_cases().iterrows():
        where = f"masks {mds.name!r}, case {r['case_id']}"
        try:
            fc, window = _fit(mds, r, tm, where)
            feats = measure(fc.seg, tm.config.features, tm.scheme, spacing_of(fc.affine))
            out.append(Request(str(r["case_id"]), r, feats, fc, window))
        except (SbldmError, CatalogError, OSError, ValueError, KeyError) as err:
            out.append((r, f"mask case {r['case_id']}: {err}"))
    return out


def csv_requests(tm: TrainedSbldm, mds: Dataset, path: str | Path) -> list[Request | tuple[pd.Series, str]]:
    """Requests from a CSV table: ``source_case``, every conditioning feature column (centroids in mm of the
    model grid), optional ``case_id`` and ``split``. The grid and head come from a mask of ``mds`` whose
    ``source_case`` is the row's (or whose case_id is)."""
    path = Path(path)
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError) as err:
        raise SbldmError(f"features_csv {str(path)!r}: cannot read it as CSV ({err})") from err
    missing = [c for c in ("source_case", *tm.norm.columns) if c not in table.columns]
    if missing:
        raise SbldmError(f"features_csv {str(path)!r}: expected columns source_case and {list(tm.norm.columns)}, "
                         f"missing {missing}")
    ok = mds.ok_cases()
    src = ok["source_case"].astype(str) if "source_case" in ok else pd.Series([""] * len(ok))
    out: list[Request | tuple[pd.Series, str]] = []
    for i, r in table.iterrows():
        sc = str(r["source_case"])
        rid = str(r["case_id"]) if "case_id" in table and isinstance(r["case_id"], str) and r["case_id"] else f"req{i:04d}"
        hosts = ok[(src == sc).to_numpy() | (ok["case_id"].astype(str) == sc).to_numpy()]
        if hosts.empty:
            out.append((pd.Series({"case_id": rid, "source_case": sc, "split": str(r.get("split", ""))}),
                        f"features_csv {path.name}, row {i}: source_case {sc!r} has no mask in masks dataset "
                        f"{mds.name!r} to take the head and grid from"))
            continue
        host = hosts.iloc[0]
        row = pd.Series({"case_id": rid, "source_case": sc,
                         "split": str(r["split"]) if "split" in table and isinstance(r["split"], str) else str(host["split"])})
        try:
            fc, window = _fit(mds, host, tm, f"features_csv {path.name}, row {i}")
        except (SbldmError, CatalogError, OSError, ValueError, KeyError) as err:
            out.append((row, str(err)))
            continue
        out.append(Request(rid, row, {c: float(r[c]) for c in tm.norm.columns}, fc, window))
    return out


# --------------------------------------------------------------------------- the synthetic dataset
@dataclass
class SbldmSynthesisSummary:
    name: str
    model: str
    masks: str
    sampler: str
    steps: int
    guidance_scale: float
    n_cases: int
    n_ok: int
    n_quarantined: int
    n_written: int
    mask_pass_rate: float
    seconds: float
    seconds_per_volume: float
    path: Path
    montage: Path | None

    def line(self) -> str:
        return (f"{self.name}: {self.n_ok} synthetic cases with generated masks ({self.n_quarantined} quarantined, "
                f"mask pass rate {self.mask_pass_rate:.2f}) from sbldm model {self.model} on {self.masks}, "
                f"ddim {self.steps} steps, guidance {self.guidance_scale:g}, {self.seconds_per_volume:.1f} s/volume, "
                f"{self.seconds:.1f} s -> {self.path}")


def _checks(tm: TrainedSbldm, mds: Dataset) -> CheckConfig:
    if tm.config.generate.checks is not None:
        return tm.config.generate.checks
    own = (mds.info.get("config") or {}).get("checks")
    return CheckConfig.model_validate(own) if isinstance(own, dict) else CheckConfig()


def _source_case(row: pd.Series) -> str:
    return text_of(row, "source_case") or str(row["case_id"])


def synthesize_dataset(workspace: str | Path, model: str, masks: str, name: str, config: SynthesizeConfig | None = None,
                       *, features_csv: str | Path | None = None, guidance_scale: float | None = None,
                       failed_masks: str | None = None, max_draws: int | None = None,
                       progress: bool | None = None) -> SbldmSynthesisSummary:
    """``config.samples_per_mask`` cases per request (ok mask of ``masks``, or row of ``features_csv``); registers
    dataset ``name``. Unset keyword arguments take the model profile's ``generate``/``sample`` values."""
    cfg = config or SynthesizeConfig()
    t0 = time.perf_counter()
    if name == masks:
        raise SbldmError(f"--name {name!r} is the masks dataset itself; choose another name for the output")
    if cfg.sampler not in (None, "ddim") or (cfg.eta or 0.0) != 0.0:
        raise SbldmError(f"sbldm samples with deterministic DDIM only: got sampler {cfg.sampler!r}, eta {cfg.eta!r}; "
                         f"leave them unset (or ddim / 0)")
    tm = load_trained_sbldm(workspace, model, cfg.device)
    mcfg = tm.config
    mds = open_dataset(workspace, masks)
    if mds.info.get("label_scheme") != tm.scheme.name:
        raise SbldmError(f"masks dataset {masks!r} uses label scheme {mds.info.get('label_scheme')!r} but model {model!r} "
                         f"was trained with {tm.scheme.name!r}; use masks in the model's scheme")
    steps = int(cfg.steps or mcfg.sample.steps)
    scale = float(mcfg.sample.guidance_scale if guidance_scale is None else guidance_scale)
    failed = failed_masks or mcfg.generate.failed_masks
    csv_path = features_csv if features_csv is not None else mcfg.generate.features_csv
    requests = csv_requests(tm, mds, csv_path) if csv_path else mask_requests(tm, mds)
    if not requests:
        raise SbldmError(f"no requests: masks dataset {masks!r} has no ok cases" if not csv_path
                         else f"features_csv {str(csv_path)!r} has no rows")
    checks = _checks(tm, mds)
    check_regions = {k: tuple(v) for k, v in tm.scheme.regions.items()}
    columns = list(tm.norm.columns)
    norm = tm.stats["normalisation"]
    lo = np.array([norm["lo"][m] for m in MODALITIES])
    hi = np.array([norm["hi"][m] for m in MODALITIES])
    cases_dir = dataset_dir(workspace, name) / "cases"
    base = {"backend": BACKEND, "sampler": "ddim", "steps": steps, "eta": 0.0, "guidance_scale": scale, "model": tm.name,
            "model_step": tm.step, "device": str(tm.device), "requests": str(csv_path) if csv_path else masks}
    rows: list[dict[str, Any]] = []
    candidates: list[dict[str, Any]] = []  # every generated mask, accepted or not: what the generator is scored on
    max_draws = int(mcfg.generate.max_draws if max_draws is None else max_draws)
    if max_draws < 1:
        raise SbldmError(f"max_draws must be at least 1, got {max_draws}")
    n_written = 0
    t_sampling = 0.0
    bar = tqdm(total=len(requests) * cfg.samples_per_mask, desc=f"synthesize {name}", unit="volume",
               disable=None if progress is None else not progress)
    for req in requests:
        for k in range(cfg.samples_per_mask):
            if isinstance(req, tuple):
                r, err = req
                mcase = str(r["case_id"])
                cid, seed = f"{mcase}-syn{k}", case_seed(cfg.seed, mcase, k)
                rows.append(quarantine_row(
                    cid, err, str(r.get("split", "")), file_keys=FILE_KEYS, has_seg=False, shape=None, spacing=None,
                    orientation="", labels=[], source_case=_source_case(r), mask_case=mcase, seed=seed,
                    params=json.dumps({**base, "sample_index": k}, sort_keys=True), model_digest=tm.digest,
                    quality_score=math.nan, fingerprint=""))
                bar.update(1)
                continue
            cid = f"{req.mask_case}-syn{k}"
            feats = torch.from_numpy(tm.norm.normalise(req.features, where=f"request {req.mask_case}"))[None]
            fc = req.fitted
            ref = mask_reference(fc.grid_seg, fc.grid_head, check_regions, spacing_of(fc.grid_affine), checks)
            for draw in range(max_draws):  # as mask augmentation: a failing candidate is drawn again, max_draws in all
                seed = case_seed(cfg.seed, req.mask_case if draw == 0 else f"{req.mask_case}:draw{draw}", k)
                ts = time.perf_counter()
                x, labels = generate(tm, feats, [make_generator(seed, tm.device)], steps, scale)
                t_sampling += time.perf_counter() - ts
                lab = labels[0].numpy() * req.window  # what falls in the padding is not written, so not measured
                seg_m, head_m = seg_from_labels(lab, tm.scheme)
                got = measure(seg_m, mcfg.features, tm.scheme, spacing_of(fc.affine))
                extra = {**{f"req_{c}": req.features[c] for c in columns}, **{f"gen_{c}": got[c] for c in columns},
                         **control_errors(req.features, got, columns)}
                xi = x[0].numpy()
                # back onto the output grid: images (shifted to >= 0) and the generated labels (0 in the padding)
                back = fc.to_grid(np.concatenate([xi + 1.0, lab[None].astype(np.float32)]))
                seg_g, head_g = seg_from_labels(np.rint(back[4]).astype(np.uint8), tm.scheme)
                reasons = check_mask(seg_g, head_g, ref, checks) if head_g.any() else ["empty_head"]
                extra["mask_check"] = ",".join(reasons)
                candidates.append(dict(extra))
                if not reasons:
                    break
            extra["draws"] = draw + 1
            params = json.dumps({**base, "sample_index": k, "draw": draw}, sort_keys=True)
            score = quality_score(xi, seg_m, head_m, tm.scheme, tm.stats["quality_reference"]) if head_m.any() else math.nan
            if reasons and failed == "quarantine":
                row = quarantine_row(
                    cid, f"generated mask of request {req.mask_case} (sample {k}) fails the plausibility checks: "
                         f"{', '.join(reasons)}", str(req.row.get("split", "")), file_keys=FILE_KEYS, has_seg=False,
                    shape=None, spacing=None, orientation="", labels=[], source_case=_source_case(req.row),
                    mask_case=req.mask_case, seed=seed, params=params, model_digest=tm.digest,
                    quality_score=float(score), fingerprint="")
            else:
                images = denormalise(back[:4] - 1.0, head_g, lo, hi)
                if str(tm.stats.get("dtype", "float32")).startswith(("int", "uint")):
                    images = np.clip(np.rint(images), 0, np.iinfo(np.int16).max).astype(np.int16)
                row = write_synthetic_case(
                    cases_dir, cid, {m: images[c] for c, m in enumerate(MODALITIES)}, seg_g, head_g, fc.grid_affine,
                    mask_row=req.row, mask_case=req.mask_case, seed=seed, params=params, model_digest=tm.digest,
                    quality_score=float(score), fingerprint="")
                n_written += 1
            row.update(extra)
            rows.append(row)
            bar.update(1)
    bar.close()
    manifest = pd.DataFrame(rows)
    control = summarise(candidates, columns)
    written = [r for r in rows if "draws" in r]
    control.update(max_draws=max_draws, n_requests=len(written),
                   request_ok_rate=(sum(1 for r in written if r["mask_check"] == "") / len(written)) if written else math.nan,
                   scope="mean_abs_error, mask_pass_rate and rejections are over every generated mask (all draws); "
                         "request_ok_rate is the share of requests that got a passing mask within max_draws")
    out = register_synthetic(
        workspace, name, manifest, mds, label_scheme=tm.scheme.name,
        config={**cfg.model_dump(mode="json"), "backend": BACKEND, "steps": steps, "guidance_scale": scale,
                "features_csv": str(csv_path) if csv_path else None, "failed_masks": failed},
        model=model, model_digest=tm.digest, generator_dataset=tm.card.get("dataset"),
        generator_train_cases=tm.card.get("train_cases"),
        note="Synthetic images AND masks from a slice-based latent diffusion model conditioned on tumour features "
             "(sbldm backend); ctrl_err_<feature> columns are |generated - requested| in mm / mm^2 / mm^3.",
        model_step=tm.step, model_profile=mcfg.profile, sampler="ddim", steps=steps, eta=0.0, backend=BACKEND,
        synthesizer=BACKEND, guidance_scale=scale, feature_columns=columns, controllability=control,
        mask_checks=checks.model_dump(mode="json"),
    )
    montage = synthesis_montage(out, mds, n_cases=cfg.montage_cases) if cfg.montage_cases else None
    n_ok = int((manifest["status"] == STATUS_OK).sum())
    return SbldmSynthesisSummary(
        name=name, model=model, masks=str(csv_path) if csv_path else masks, sampler="ddim", steps=steps,
        guidance_scale=scale, n_cases=len(manifest), n_ok=n_ok, n_quarantined=len(manifest) - n_ok, n_written=n_written,
        mask_pass_rate=float(control["mask_pass_rate"]), seconds=time.perf_counter() - t0,
        seconds_per_volume=t_sampling / max(len(manifest), 1), path=out.root, montage=montage)


# --------------------------------------------------------------------------- size sweep
def size_sweep_montage(workspace: str | Path, model: str, out: str | Path | None = None,
                       volumes_mm3: list[float] | None = None, seed: int = 0, steps: int | None = None,
                       guidance_scale: float | None = None, device: str = "auto", progress: bool | None = None) -> Path:
    """PNG montage of generated cases for a sweep of requested whole-tumour volumes (small to large) at one
    fixed centre (the training mean), all from the same seed. Every other feature starts at the training
    mean; surfaces scale as V^(2/3) and bounding boxes as V^(1/3) with the volume (per region)."""
    from components.viz import render_montage

    tm = load_trained_sbldm(workspace, model, device)
    norm = tm.norm
    mean = dict(zip(norm.columns, norm.mean, strict=True))
    std = dict(zip(norm.columns, norm.std, strict=True))
    vkey = next((c for c in norm.columns if c.startswith("volume_mm3_")), None)
    if vkey is None:
        raise SbldmError(f"model {model!r} is not conditioned on a volume feature (its features: {list(norm.columns)})")
    if volumes_mm3 is None:
        lo_v = max(mean[vkey] - 1.5 * std[vkey], 0.25 * mean[vkey])
        hi_v = mean[vkey] + 2.0 * std[vkey]
        volumes_mm3 = np.geomspace(lo_v, hi_v, tm.config.generate.sweep_points).tolist()
    spacing = tm.config.data.spacing or (1.0, 1.0, 1.0)
    affine = np.diag([*spacing, 1.0])
    window = tm.stats["normalisation"]
    lo, hi = (np.array([window[k][m] for m in MODALITIES]) for k in ("lo", "hi"))
    cases = []
    for v in volumes_mm3:
        r = float(v) / mean[vkey]
        req = dict(mean)
        for c in norm.columns:
            if c.startswith("volume_mm3_"):
                req[c] = mean[c] * r
            elif c.startswith("surface_mm2_"):
                req[c] = mean[c] * r ** (2 / 3)
            elif c.startswith("bbox_"):
                req[c] = mean[c] * r ** (1 / 3)
        x, labels = generate(tm, torch.from_numpy(norm.normalise(req))[None], [make_generator(seed, tm.device)], steps,
                             guidance_scale, progress)
        seg, head = seg_from_labels(labels[0].numpy(), tm.scheme)
        got = measure(seg, tm.config.features, tm.scheme, spacing)
        images = denormalise(x[0].numpy(), head, lo, hi)  # intensities, 0 outside the head (the montage's window)
        cases.append({"case_id": f"asked {v / 1000:.1f} cm3\ngot {got[vkey] / 1000:.1f} cm3",
                      "images": {m: images[c] for c, m in enumerate(MODALITIES)}, "seg": seg, "affine": affine})
    path = Path(out) if out is not None else tm.paths.root / "size_sweep.png"
    return render_montage(cases, path, f"sbldm {model}: requested whole-tumour volume sweep, one centre, seed {seed}")
