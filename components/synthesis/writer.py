"""Write a ``synthetic`` dataset: one trained model, one masks dataset, K samples per mask.

Each case is four modalities + the mask's seg and head on the mask's own grid, with the mask's
affine (or, when the model works at another spacing, the resampled grid and its true affine),
zero outside the head and mapped back to intensities with the model's saved window. A model with an
anatomical prior samples an augmented mask with the prior moved by the mask's recorded flip/affine
(``components.synthesis.prior``; ``prior_transform`` in the case's params). Cases are
written atomically (temporary folder, then rename) with a ``row.json``; a re-run keeps every case
whose inputs (model weights, mask files, sampler, seed) are unchanged and makes only the rest.
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

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from components.io import atomic_dir, sha256_file, write_case_volumes
from components.progress import tqdm
from components.seeds import derive_seed
from components.synthesis.config import SynthesisError, SynthesizeConfig
from components.synthesis.data import (
    FittedCase,
    condition_labels,
    denormalise,
    fit_case,
    head_method,
    load_case,
    spacing_of,
)
from components.synthesis.prior import NONE, host_grid, mask_params, prior_transform_kind, transform_prior
from components.synthesis.quality import quality_score
from components.synthesis.sampling import make_generator, resolve_sampling, sample_images
from components.synthesis.store import TrainedModel, load_trained_model
from data_catalog import (
    MODALITIES,
    STATUS_OK,
    CatalogError,
    Dataset,
    dataset_dir,
    dataset_parent_entry,
    has_file,
    open_dataset,
    quarantine_row,
    register_dataset,
    remove_stale_cases,
    text_of,
)

log = logging.getLogger(__name__)
FILE_KEYS = (*MODALITIES, "seg", "head")


@dataclass
class SynthesisSummary:
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
                f"{self.n_quarantined} quarantined) from model {self.model} on masks {self.masks}, "
                f"{self.sampler} {self.steps} steps, {self.seconds_per_volume:.1f} s/volume, {self.seconds:.1f} s "
                f"-> {self.path}")


@dataclass
class _Item:
    case_id: str
    mask_case: str
    index: int
    seed: int
    row: pd.Series
    fingerprint: str
    prior_transform: str = NONE  # whole-head transforms of the mask that the prior follows


def case_seed(seed: int, mask_case: str, index: int) -> int:
    """Seed of one synthetic case: from the run seed, the mask case id and the sample index."""
    return derive_seed(seed, mask_case, index)


def _mask_digest(ds: Dataset, row: pd.Series) -> dict[str, str]:
    keys = ["seg", "head"] if has_file(row, "head") else ["seg", *MODALITIES]
    return {k: str(row.get(f"sha256_{k}") or sha256_file(ds.path(row["case_id"], k))) for k in keys}


def _source_case(row: pd.Series) -> str:
    return text_of(row, "source_case") or str(row["case_id"])


def _params(it: _Item, sampler: str, steps: int, eta: float, tm: TrainedModel, extra: dict[str, Any] | None = None) -> str:
    p = {"sampler": sampler, "steps": steps, "eta": eta, "sample_index": it.index, "model": tm.name,
         "model_step": tm.step, "device": str(tm.device), **(extra or {})}
    return json.dumps(p, sort_keys=True)


def _quarantine_row(it: _Item, reason: str, params: str, digest: str) -> dict[str, Any]:
    return quarantine_row(
        it.case_id, reason, str(it.row.get("split", "")), file_keys=FILE_KEYS, has_seg=False, shape=None, spacing=None,
        orientation="", labels=[], source_case=_source_case(it.row), mask_case=it.mask_case, seed=it.seed,
        params=params, model_digest=digest, quality_score=math.nan, fingerprint=it.fingerprint,
    )


def _write_case(it: _Item, fc: FittedCase, x: np.ndarray, tm: TrainedModel, cases_dir: Path, params: str) -> dict[str, Any]:
    """x: (4, *model shape) normalised sample. Writes the case folder atomically; returns its manifest row."""
    score = quality_score(x, fc.seg, fc.head, tm.scheme, tm.stats["quality_reference"])
    norm = tm.stats["normalisation"]
    lo = np.array([norm["lo"][m] for m in MODALITIES])
    hi = np.array([norm["hi"][m] for m in MODALITIES])
    # back onto the mask's grid; the extra channel marks the model window (0 where it was padded back)
    back = fc.to_grid(np.concatenate([x + 1.0, np.ones((1, *x.shape[1:]), np.float32)]))
    window = back[-1] > 0.5
    images = denormalise(back[:-1] - 1.0, fc.grid_head & window, lo, hi)
    integer = str(tm.stats.get("dtype", "float32")).startswith(("int", "uint"))
    if integer:
        images = np.clip(np.rint(images), 0, np.iinfo(np.int16).max)
    out_dtype = np.int16 if integer else np.float32
    channels = {m: images[c].astype(out_dtype) for c, m in enumerate(MODALITIES)}
    return write_synthetic_case(cases_dir, it.case_id, channels, fc.grid_seg, fc.grid_head, fc.grid_affine,
                                mask_row=it.row, mask_case=it.mask_case, seed=it.seed, params=params,
                                model_digest=tm.digest, quality_score=float(score), fingerprint=it.fingerprint)


def write_synthetic_case(cases_dir: Path, case_id: str, images: dict[str, np.ndarray], seg: np.ndarray,
                         head: np.ndarray, affine: np.ndarray, *, mask_row: pd.Series, mask_case: str, seed: int,
                         params: str, model_digest: str, quality_score: float = math.nan,
                         fingerprint: str = "") -> dict[str, Any]:
    """The contract of a synthetic case, for every synthesizer: its four modalities (in ``images``'
    dtype), seg and head in ``cases/<case_id>/`` (written atomically, with a ``row.json``), linked to
    the mask it was made from (``mask_case``) and that mask's real ``source_case``, with the mask's
    split. Returns its manifest row."""
    volumes = {**{m: (images[m], images[m].dtype) for m in MODALITIES},
               "seg": (seg, np.uint8), "head": (head.astype(np.uint8), np.uint8)}
    with atomic_dir(cases_dir / case_id) as tmp:
        files = write_case_volumes(tmp, case_id, volumes, affine, f"cases/{case_id}/")
        row: dict[str, Any] = {"case_id": case_id, **files}
        row.update(
            status=STATUS_OK, reason="", split=str(mask_row.get("split", "")), has_seg=True,
            shape=[int(s) for s in seg.shape], spacing=[round(s, 6) for s in spacing_of(affine)],
            orientation="".join(nib.aff2axcodes(affine)),
            labels=[int(v) for v in np.unique(seg)], source_case=_source_case(mask_row), mask_case=mask_case,
            seed=seed, params=params, model_digest=model_digest, quality_score=quality_score, fingerprint=fingerprint,
        )
        (tmp / "row.json").write_text(json.dumps(row, indent=1), encoding="utf-8")
    return row


def _reuse(cases_dir: Path, it: _Item) -> dict[str, Any] | None:
    f = cases_dir / it.case_id / "row.json"
    if not f.is_file():
        return None
    try:
        prev = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if prev.get("fingerprint") != it.fingerprint:
        return None
    if not all((cases_dir.parent / prev.get(k, "")).is_file() for k in FILE_KEYS):
        return None
    return prev


def synthesize_dataset(workspace: str | Path, model: str, masks: str, name: str, config: SynthesizeConfig | None = None,
                       progress: bool | None = None) -> SynthesisSummary:
    """Sample ``config.samples_per_mask`` cases per ok mask of ``masks`` with ``model``; register ``name``."""
    cfg = config or SynthesizeConfig()
    t0 = time.perf_counter()
    tm = load_trained_model(workspace, model, cfg.device)  # refuses an untrained model
    mds = open_dataset(workspace, masks)
    if name == masks:
        raise SynthesisError(f"--name {name!r} is the masks dataset itself; choose another name for the output")
    if mds.info.get("label_scheme") != tm.scheme.name:
        raise SynthesisError(f"masks dataset {masks!r} uses label scheme {mds.info.get('label_scheme')!r} but model "
                             f"{model!r} was trained with {tm.scheme.name!r}; use masks in the model's scheme")
    cfg = resolve_sampling(cfg, tm.config)  # sampler/steps/eta/batch left unset: the model profile's sample block
    steps = cfg.steps
    root = dataset_dir(workspace, name)
    cases_dir = root / "cases"
    ok = mds.ok_cases()
    if ok.empty:
        raise SynthesisError(f"masks dataset {masks!r} has no ok cases")
    items: list[_Item] = []
    for _, r in ok.iterrows():
        digest = _mask_digest(mds, r)
        try:
            moved = prior_transform_kind(mask_params(r)) if tm.prior is not None else NONE
        except SynthesisError:
            moved = NONE  # params that are not JSON: sampled like a real mask, with the prior as it is
        for k in range(cfg.samples_per_mask):
            seed = case_seed(cfg.seed, r["case_id"], k)
            key = {"model": tm.digest, "mask": digest, "head": head_method(), "sampler": cfg.sampler, "steps": steps,
                   "eta": cfg.eta, "seed": seed, "data": tm.config.data.model_dump(mode="json"), "v": 1}
            if moved != NONE:  # only then: cases of untransformed masks keep their fingerprint
                key["prior_transform"] = moved
            fp = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
            items.append(_Item(f"{r['case_id']}-syn{k}", r["case_id"], k, seed, r, fp, moved))

    rows: dict[str, dict[str, Any]] = {}
    pending: list[_Item] = []
    for it in items:
        prev = _reuse(cases_dir, it)
        if prev is not None:
            rows[it.case_id] = prev
        else:
            pending.append(it)
    n_reused = len(rows)
    log.info("%s: %d cases to sample, %d kept from an earlier run", name, len(pending), n_reused)

    n_written, t_sampling = 0, 0.0
    bar = tqdm(total=len(pending), desc=f"synthesize {name}", unit="case", disable=None if progress is None else not progress)
    mask_cache: dict[str, tuple[FittedCase, np.ndarray, torch.Tensor | None] | str] = {}
    prior_np = tm.prior.numpy() if tm.prior is not None else None
    hosts: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # host case -> (model-grid affine, native affine)
    for start in range(0, len(pending), cfg.batch):
        batch = pending[start:start + cfg.batch]
        ready: list[tuple[_Item, FittedCase, np.ndarray, torch.Tensor | None]] = []
        for it in batch:
            base_params = _params(it, cfg.sampler, steps, cfg.eta, tm)
            if it.mask_case not in mask_cache:
                try:
                    c = load_case(mds, it.row, with_images=False)
                    fc = fit_case(None, c["seg"], c["head"], c["affine"], tm.config.data)
                    if fc.lost_tumour_voxels:
                        raise SynthesisError(f"{fc.lost_tumour_voxels} tumour voxels fall outside the model window "
                                             f"{tm.config.data.shape}: the mask's head is larger than the model grid")
                    labels = condition_labels(fc.seg, fc.head, tm.scheme, where=f"masks {masks!r}, case {it.mask_case}")
                    moved = None  # None: the model's prior as it is
                    if it.prior_transform != NONE and prior_np is not None:
                        p = mask_params(it.row)
                        host = str((p.host_case if p is not None else "") or _source_case(it.row))
                        if host not in hosts:
                            hosts[host] = host_grid(mds.root, str(mds.info.get("source_features") or "source_features.parquet"),
                                                    host, tm.config.data)
                        moved = torch.from_numpy(transform_prior(prior_np, p, fc.affine, c["affine"], *hosts[host])).to(tm.prior.dtype)
                    mask_cache[it.mask_case] = (fc, labels, moved)
                except (SynthesisError, CatalogError, OSError, ValueError, KeyError) as err:
                    mask_cache[it.mask_case] = f"mask case {it.mask_case}: {err}"
            entry = mask_cache[it.mask_case]
            if isinstance(entry, str):
                rows[it.case_id] = _quarantine_row(it, entry, base_params, tm.digest)
                bar.update(1)
                continue
            ready.append((it, *entry))
        if not ready:
            continue
        labels_t = torch.stack([torch.from_numpy(lab).long() for _, _, lab, _ in ready])
        gens = [make_generator(it.seed, tm.device) for it, _, _, _ in ready]
        prior = tm.prior
        if any(moved is not None for *_, moved in ready):  # one prior per volume
            prior = torch.stack([tm.prior if moved is None else moved for *_, moved in ready])
        ts = time.perf_counter()
        x = sample_images(tm.network, labels_t, tm.n_condition, tm.config.diffusion, gens, sampler=cfg.sampler,
                          steps=steps, eta=cfg.eta, amp=tm.config.train.amp, progress=progress, prior=prior).numpy()
        t_sampling += time.perf_counter() - ts
        for i, (it, fc, _, _) in enumerate(ready):
            extra = {"resampled": fc.resampled, "lost_head_voxels": fc.lost_head_voxels,
                     "prior_transform": it.prior_transform}
            rows[it.case_id] = _write_case(it, fc, x[i], tm, cases_dir, _params(it, cfg.sampler, steps, cfg.eta, tm, extra))
            n_written += 1
            bar.update(1)
        # the K samples of one mask are consecutive: only the last mask can be needed again
        mask_cache = {k: v for k, v in mask_cache.items() if k == batch[-1].mask_case}
    bar.close()

    manifest = pd.DataFrame([rows[it.case_id] for it in items])
    out = register_synthetic(
        workspace, name, manifest, mds, label_scheme=tm.scheme.name,
        config={**cfg.model_dump(mode="json"), "steps": steps},
        model=model, model_digest=tm.digest, generator_dataset=tm.card.get("dataset"),
        generator_train_cases=tm.card.get("train_cases"), synthesizer="ddpm",
        note="Synthetic cases from a mask-conditioned diffusion model; quality_score ranks them (1 = tissue "
             "statistics of the training data).",
        model_step=tm.step, model_profile=tm.config.profile, sampler=cfg.sampler, steps=steps, eta=cfg.eta,
    )
    montage = synthesis_montage(out, mds, n_cases=cfg.montage_cases)
    n_ok = int((manifest["status"] == STATUS_OK).sum())
    return SynthesisSummary(
        name=name, model=model, masks=masks, sampler=cfg.sampler, steps=steps, n_cases=len(manifest), n_ok=n_ok,
        n_quarantined=len(manifest) - n_ok, n_written=n_written, n_reused=n_reused, seconds=time.perf_counter() - t0,
        seconds_per_volume=t_sampling / n_written if n_written else 0.0, path=root, montage=montage,
    )


def register_synthetic(workspace: str | Path, name: str, manifest: pd.DataFrame, masks: Dataset, *, label_scheme: str,
                       config: dict[str, Any], model: str, model_digest: str, generator_dataset: str | None,
                       generator_train_cases: list[str] | None, note: str, **extra: Any) -> Dataset:
    """Register a synthetic dataset, for every synthesizer: its parent is the masks dataset, and its
    dataset.json names the model and the real cases the generator learnt from (``generator_dataset``,
    ``generator_train_cases``: the ablation's leak check reads them). Case folders the manifest does
    not list as ok are removed first."""
    manifest = manifest.copy()
    manifest["seed"] = manifest["seed"].astype("Int64")
    manifest["quality_score"] = manifest["quality_score"].astype(float)
    remove_stale_cases(dataset_dir(workspace, name), set(manifest.loc[manifest["status"] == STATUS_OK, "case_id"]))
    return register_dataset(
        workspace, name, kind="synthetic", label_scheme=label_scheme, manifest=manifest, config=config,
        parents=[dataset_parent_entry(masks)],
        extra={"model": model, "model_digest": model_digest, "model_step": extra.pop("model_step", None),
               "model_profile": extra.pop("model_profile", None), "model_dataset": generator_dataset,
               "generator_dataset": generator_dataset, "generator_train_cases": generator_train_cases,
               **extra, "note": note},
    )


def synthesis_montage(ds: Dataset, masks: Dataset, n_cases: int = 4, out: Path | None = None) -> Path | None:
    """Each synthetic case beside a real one: the real case of the same mask when the masks dataset
    has images, else the real case the augmented mask was derived from (labelled so)."""
    from components.io import load_nifti
    from components.viz import render_montage

    rows = ds.ok_cases().head(n_cases)
    if rows.empty:
        return None
    source = None
    try:  # augmented masks carry no images: show the real case they came from
        source = open_dataset(ds.root.parent.parent, str(masks.info.get("source", "")))
    except CatalogError:  # no source dataset in the catalog: synthetic rows only
        source = None

    def real_row(d: Dataset, cid: str, label: str) -> dict[str, Any] | None:
        m = d.manifest.loc[d.manifest["case_id"] == cid]
        if m.empty or not all(has_file(m.iloc[0], k) for k in MODALITIES):
            return None
        seg, aff, _ = load_nifti(d.path(cid, "seg"))
        return {"case_id": f"{cid}\n{label}", "images": {k: load_nifti(d.path(cid, k))[0].astype(np.float32)
                                                          for k in MODALITIES}, "seg": np.asarray(seg), "affine": aff}

    cases, kinds = [], set()
    for _, r in rows.iterrows():
        real = real_row(masks, str(r["mask_case"]), "real, same mask")
        if real is None and source is not None and r.get("source_case"):
            real = real_row(source, str(r["source_case"]), "real source of the mask")
        if real is not None:
            cases.append(real)
            kinds.add(real["case_id"].split("\n")[1])
        imgs = {m: load_nifti(ds.path(r["case_id"], m))[0].astype(np.float32) for m in MODALITIES}
        seg, aff, _ = load_nifti(ds.path(r["case_id"], "seg"))
        cases.append({"case_id": f"{r['case_id']}\nsynthetic", "images": imgs, "seg": np.asarray(seg), "affine": aff})
    beside = f" beside {' / '.join(sorted(kinds))}" if kinds else " (no real images for these masks)"
    return render_montage(cases, out or ds.root / "montage.png",
                          f"{ds.name} [synthetic, model {ds.info.get('model')}]{beside}")
