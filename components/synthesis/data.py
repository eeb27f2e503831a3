"""Data for the synthesizer: conditioning maps, head masks, the model grid, intensity scaling.

Shapes: images are (4, X, Y, Z) in ``MODALITIES`` order, masks (X, Y, Z); a case's affine maps its
voxel indices to millimetres. The conditioning follows GliomaGen (docs/design.md §3): 0 background, 1 head,
tumour labels shifted up, but the tumour channels are numbered by rank so that a scheme whose
values have gaps (BraTS 2021: 1, 2, 4) gets no dead channel; for the canonical schemes rank + 2 is
exactly value + 1. The channel count therefore comes from the label scheme: 2 + number of labels.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from components.io import atomic_path, load_nifti, write_json_atomic
from components.progress import tqdm
from components.synthesis.config import DataConfig, SynthesisError
from data_catalog import MODALITIES, Dataset, LabelScheme, has_file

log = logging.getLogger(__name__)

BACKGROUND, HEAD = 0, 1


# --------------------------------------------------------------------------- head and conditioning
def fallback_head_mask(images: np.ndarray, seg: np.ndarray | None) -> np.ndarray:
    """Head = any modality above zero, plus the tumour (skull-stripped data has a zero background)."""
    head = np.asarray(images).max(0) > 0
    if seg is not None:
        head |= np.asarray(seg) > 0
    return head


def head_method() -> str:
    """Which head derivation :func:`derive_head` uses in this checkout (part of cache keys)."""
    try:
        from components.masks import derive_head_mask  # noqa: F401
    except ImportError:
        return "fallback:max>0+tumour"
    return "components.masks.derive_head_mask(spacing)"


def derive_head(images: np.ndarray, seg: np.ndarray | None, spacing: tuple[float, ...] | None = None) -> np.ndarray:
    """Head mask (X, Y, Z) bool from the four modalities: the masks stage's method (Otsu, closing,
    hole filling, largest component) when present, else :func:`fallback_head_mask`."""
    try:
        from components.masks import derive_head_mask
    except ImportError:
        return fallback_head_mask(images, seg)
    import inspect

    kwargs = {}
    if spacing is not None and "spacing" in inspect.signature(derive_head_mask).parameters:
        kwargs["spacing"] = tuple(float(s) for s in spacing)  # its closing radius is in millimetres
    head = np.asarray(derive_head_mask(images, seg, **kwargs), dtype=bool)
    if seg is not None:
        head |= np.asarray(seg) > 0
    return head


def condition_channels(scheme: LabelScheme) -> dict[int, int]:
    """Seg value -> conditioning channel: tumour labels in the order of ``scheme.conditioning_values()``."""
    ordered = sorted(scheme.conditioning_values().items(), key=lambda kv: kv[1])
    return {value: HEAD + 1 + rank for rank, (value, _) in enumerate(ordered)}


def n_condition_channels(scheme: LabelScheme) -> int:
    return HEAD + 1 + len(scheme.labels)


def condition_labels(seg: np.ndarray, head: np.ndarray, scheme: LabelScheme, where: str = "") -> np.ndarray:
    """Conditioning label map (X, Y, Z) uint8: 0 outside the head, 1 head, 2.. tumour labels."""
    seg = np.asarray(seg)
    present = set(np.unique(seg).astype(int).tolist())
    unknown = sorted(present - set(scheme.values))
    if unknown:
        raise SynthesisError(f"{where or 'seg'}: values {unknown} are not in label scheme {scheme.name!r} "
                             f"(allowed {list(scheme.values)}); remap the mask to the model's scheme")
    out = np.where(np.asarray(head, dtype=bool) | (seg > 0), HEAD, BACKGROUND).astype(np.uint8)
    for value, channel in condition_channels(scheme).items():
        out[seg == value] = channel
    return out


def one_hot(labels: torch.Tensor, n_channels: int) -> torch.Tensor:
    """(B, X, Y, Z) integer label map -> (B, C, X, Y, Z) float one-hot."""
    return F.one_hot(labels.long(), n_channels).permute(0, 4, 1, 2, 3).float()


# --------------------------------------------------------------------------- grid
def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    a = np.asarray(affine, dtype=float)
    return tuple(float(v) for v in np.sqrt((a[:3, :3] ** 2).sum(0)))


@dataclass
class FittedCase:
    """A case on the model grid plus what is needed to put a volume back on the case's own grid.

    The output grid is the case's grid, resampled to the model spacing when the two differ; its
    affine (``grid_affine``) is the true one for that grid (never the pre-resampling affine).
    """

    seg: np.ndarray            # (X, Y, Z) uint8 on the model grid
    head: np.ndarray           # (X, Y, Z) bool on the model grid
    images: np.ndarray | None  # (4, X, Y, Z) float32 raw intensities on the model grid
    affine: np.ndarray         # model-grid affine
    grid_seg: np.ndarray       # seg on the output grid
    grid_head: np.ndarray      # head on the output grid
    grid_affine: np.ndarray
    resampled: bool
    source_spacing: tuple[float, float, float]
    lost_head_voxels: int      # head voxels outside the model window
    lost_tumour_voxels: int
    _fit: Any = field(repr=False, default=None)
    _ops: list = field(repr=False, default_factory=list)

    def to_grid(self, volume: np.ndarray) -> np.ndarray:
        """(C, *model shape) -> (C, *output grid shape): MONAI's inverse of the crop/pad."""
        from monai.data import MetaTensor

        mt = MetaTensor(torch.as_tensor(np.ascontiguousarray(volume)), affine=torch.as_tensor(self.affine),
                        applied_operations=copy.deepcopy(self._ops))
        inv = self._fit.inverse({"seg": mt})["seg"]  # "seg" is always among the fitted keys
        out = np.asarray(inv.detach().cpu().numpy(), dtype=np.float32)
        inv_affine = np.asarray(inv.affine, dtype=float)
        if out.shape[1:] != self.grid_seg.shape or not np.allclose(inv_affine, self.grid_affine, atol=1e-4):
            raise RuntimeError(f"inverse crop/pad gave shape {out.shape[1:]} / affine {inv_affine.tolist()}, expected "
                               f"{self.grid_seg.shape} / {self.grid_affine.tolist()}")
        return out


def fit_case(images: np.ndarray | None, seg: np.ndarray, head: np.ndarray, affine: np.ndarray,
             cfg: DataConfig) -> FittedCase:
    """Resample (if the spacing differs; images linear, masks nearest) and crop/pad around the head.

    MONAI transforms on MetaTensors carry the affine through every step, so the returned affines
    are true for the arrays they come with.
    """
    from monai.data import MetaTensor
    from monai.transforms import Compose, CropForegroundd, ResizeWithPadOrCropd, Spacingd

    aff = torch.as_tensor(np.asarray(affine, dtype=np.float64))
    d: dict[str, Any] = {
        "seg": MetaTensor(torch.as_tensor(np.asarray(seg, dtype=np.float32)[None]), affine=aff.clone()),
        "head": MetaTensor(torch.as_tensor(np.asarray(head, dtype=np.float32)[None]), affine=aff.clone()),
    }
    if images is not None:
        d["image"] = MetaTensor(torch.as_tensor(np.asarray(images, dtype=np.float32)), affine=aff.clone())
    keys = [k for k in ("image", "seg", "head") if k in d]
    src_spacing = spacing_of(affine)
    resampled = cfg.spacing is not None and not np.allclose(src_spacing, cfg.spacing, rtol=0, atol=1e-3)
    if resampled:
        modes = ["bilinear" if k == "image" else "nearest" for k in keys]
        d = Spacingd(keys=keys, pixdim=cfg.spacing, mode=modes, padding_mode="zeros")(d)
    grid_seg = np.rint(d["seg"][0].numpy()).astype(np.uint8)
    grid_head = d["head"][0].numpy() > 0.5
    grid_affine = np.asarray(d["seg"].affine, dtype=float)
    if not grid_head.any():
        raise SynthesisError("the head mask is empty: nothing to crop around (check the head/seg files)")
    fit = Compose([
        CropForegroundd(keys=keys, source_key="head", allow_smaller=True, allow_missing_keys=True),
        ResizeWithPadOrCropd(keys=keys, spatial_size=cfg.shape, allow_missing_keys=True),
    ])
    f = fit(d)
    seg_m = np.rint(f["seg"][0].numpy()).astype(np.uint8)
    head_m = f["head"][0].numpy() > 0.5
    imgs = np.asarray(f["image"].numpy(), dtype=np.float32) if "image" in f else None
    return FittedCase(
        seg=seg_m, head=head_m, images=imgs, affine=np.asarray(f["seg"].affine, dtype=float),
        grid_seg=grid_seg, grid_head=grid_head, grid_affine=grid_affine, resampled=bool(resampled),
        source_spacing=src_spacing,
        lost_head_voxels=int(grid_head.sum() - head_m.sum()), lost_tumour_voxels=int((grid_seg > 0).sum() - (seg_m > 0).sum()),
        _fit=fit, _ops=copy.deepcopy(f["seg"].applied_operations),
    )


# --------------------------------------------------------------------------- intensities
def intensity_window(images: np.ndarray, head: np.ndarray, percentiles: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Per-modality (low, high) percentiles inside the head: arrays of shape (4,)."""
    if not head.any():
        raise SynthesisError("the head mask is empty: cannot compute intensity percentiles")
    lo = np.empty(images.shape[0])
    hi = np.empty(images.shape[0])
    for c in range(images.shape[0]):
        lo[c], hi[c] = np.percentile(images[c][head], percentiles)
        if hi[c] <= lo[c]:
            hi[c] = lo[c] + 1.0
    return lo, hi


def normalise(images: np.ndarray, head: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Window [lo, hi] -> [-1, 1] per modality, clipped; -1 outside the head. (4, X, Y, Z) float32."""
    lo = np.asarray(lo, dtype=np.float32).reshape(-1, 1, 1, 1)
    hi = np.asarray(hi, dtype=np.float32).reshape(-1, 1, 1, 1)
    x = 2.0 * (np.asarray(images, dtype=np.float32) - lo) / (hi - lo) - 1.0
    x = np.clip(x, -1.0, 1.0)
    x[:, ~np.asarray(head, dtype=bool)] = -1.0
    return x.astype(np.float32)


def denormalise(x: np.ndarray, head: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Inverse of :func:`normalise` with the model's saved window; exactly 0 outside the head."""
    lo = np.asarray(lo, dtype=np.float32).reshape(-1, 1, 1, 1)
    hi = np.asarray(hi, dtype=np.float32).reshape(-1, 1, 1, 1)
    out = lo + (np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0) + 1.0) * 0.5 * (hi - lo)
    out = out * np.asarray(head, dtype=bool)[None]
    return out.astype(np.float32)


# --------------------------------------------------------------------------- reading cases
def load_case(ds: Dataset, row: pd.Series, with_images: bool = True) -> dict[str, Any]:
    """Read one case: images (or None), seg, head and affine. The head comes from the dataset's
    ``head`` file when it has one, else it is derived from the images."""
    cid = row["case_id"]
    if not has_file(row, "seg"):
        raise SynthesisError(f"dataset {ds.name!r}, case {cid}: no seg file; a conditioning mask is required")
    seg, affine, _ = load_nifti(ds.path(cid, "seg"))
    seg = np.rint(np.asarray(seg)).astype(np.uint8)
    images, dtype = None, ""
    if with_images or not has_file(row, "head"):
        if not all(has_file(row, m) for m in MODALITIES):
            raise SynthesisError(f"dataset {ds.name!r}, case {cid}: needs {', '.join(MODALITIES)} "
                                 f"({'to train on' if with_images else 'to derive a head mask; or give a head file'})")
        vols = []
        for m in MODALITIES:
            arr, _, _ = load_nifti(ds.path(cid, m))
            dtype = dtype if vols else str(arr.dtype)
            if arr.shape != seg.shape:
                raise SynthesisError(f"dataset {ds.name!r}, case {cid}: {m} has shape {arr.shape}, seg {seg.shape}")
            vols.append(np.asarray(arr, dtype=np.float32))
        images = np.stack(vols)
    if has_file(row, "head"):
        head_arr, _, _ = load_nifti(ds.path(cid, "head"))
        head = np.asarray(head_arr) > 0
        if head.shape != seg.shape:
            raise SynthesisError(f"dataset {ds.name!r}, case {cid}: head has shape {head.shape}, seg {seg.shape}")
        head |= seg > 0
    else:
        head = derive_head(images, seg, spacing_of(affine))
    return {"case_id": cid, "images": images, "seg": seg, "head": head, "affine": affine, "dtype": dtype}


# --------------------------------------------------------------------------- training set
@dataclass
class PreparedCase:
    case_id: str
    image: np.ndarray     # (4, X, Y, Z) float32 in [-1, 1]
    labels: np.ndarray    # (X, Y, Z) uint8 conditioning map
    affine: np.ndarray
    info: dict[str, Any]  # window lo/hi, resampled, tissue statistics


def head_extent(head: np.ndarray) -> list[int]:
    """Voxels spanned by the head's bounding box along each axis (what a model grid must hold)."""
    idx = np.nonzero(head)
    return [int(a.max() - a.min() + 1) if a.size else 0 for a in idx]


# Head voxels a training case may lose to the model window before the grid counts as too small for it.
HEAD_LOSS_TOLERANCE = 0.02


def check_grid_fits(dataset: str, ids: list[str], infos: list[dict[str, Any]], cfg: DataConfig) -> None:
    """Refuse a training set whose heads the profile's grid cannot hold (SynthesisError naming the grid
    and the shape it would need); such a model could not synthesize from this dataset's masks."""
    bad = [(cid, i) for cid, i in zip(ids, infos, strict=True)
           if i["lost_tumour_voxels"] > 0 or i["lost_head_voxels"] > HEAD_LOSS_TOLERANCE * max(i["head_voxels"], 1)]
    if not bad:
        return
    need = [max(e) for e in zip(*(i["head_extent"] for i in infos), strict=True)]
    cid, worst = max(bad, key=lambda b: b[1]["lost_head_voxels"])
    where = f"at {list(cfg.spacing)} mm" if cfg.spacing is not None else "at the dataset's own spacing"
    raise SynthesisError(
        f"dataset {dataset!r}: the heads of {len(bad)} of {len(ids)} training cases do not fit the profile's grid "
        f"data.shape {list(cfg.shape)} {where} (case {cid} loses {worst['lost_head_voxels']} head and "
        f"{worst['lost_tumour_voxels']} tumour voxels); the grid would need at least {need} voxels: choose a "
        f"profile with a larger data.shape or a coarser data.spacing")


def prepare_case(ds: Dataset, row: pd.Series, cfg: DataConfig, scheme: LabelScheme) -> PreparedCase:
    from components.synthesis.quality import tissue_statistics

    c = load_case(ds, row, with_images=True)
    fc = fit_case(c["images"], c["seg"], c["head"], c["affine"], cfg)
    lo, hi = intensity_window(fc.images, fc.head, cfg.percentiles)
    image = normalise(fc.images, fc.head, lo, hi)
    labels = condition_labels(fc.seg, fc.head, scheme, where=f"dataset {ds.name!r}, case {c['case_id']}")
    info = {"lo": lo.tolist(), "hi": hi.tolist(), "resampled": fc.resampled, "source_spacing": list(fc.source_spacing),
            "lost_head_voxels": fc.lost_head_voxels, "lost_tumour_voxels": fc.lost_tumour_voxels,
            "head_voxels": int(fc.grid_head.sum()), "head_extent": head_extent(fc.grid_head),
            "tissue": tissue_statistics(image, fc.seg, fc.head, scheme),
            "dtype": c["dtype"]}
    return PreparedCase(c["case_id"], image, labels, fc.affine, info)


def case_fingerprint(row: pd.Series, cfg: DataConfig, scheme: LabelScheme) -> str:
    files = {k: str(row.get(f"sha256_{k}", "")) for k in (*MODALITIES, "seg", "head")}
    key = {"files": files, "data": cfg.model_dump(mode="json"), "scheme": scheme.name, "head": head_method(), "v": 2}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


class TrainingSet:
    """The prepared training cases, cached on disk under ``cache_dir`` (one .npz + .json per case).

    Small sets are held in memory; large ones are read per draw (a GPU profile's 1000+ cases).
    """

    def __init__(self, cache_dir: Path, case_ids: list[str], infos: list[dict[str, Any]], in_memory: bool):
        self.cache_dir = cache_dir
        self.case_ids = case_ids
        self.infos = infos
        self._memory: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if in_memory:
            for i in range(len(case_ids)):
                self._memory[i] = self._read(i)

    def __len__(self) -> int:
        return len(self.case_ids)

    def _read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        with np.load(self.cache_dir / f"{self.case_ids[i]}.npz") as z:
            return z["image"].astype(np.float32), z["labels"].astype(np.uint8)

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(image (4, X, Y, Z) float32 in [-1, 1], labels (X, Y, Z) uint8) of case ``i``."""
        return self._memory[i] if i in self._memory else self._read(i)

    def affine(self, i: int) -> np.ndarray:
        return np.asarray(self.infos[i]["affine"], dtype=float)


def prepare_training_set(ds: Dataset, cases: pd.DataFrame, cfg: DataConfig, scheme: LabelScheme, cache_dir: Path,
                         progress: bool | None = None, memory_limit_bytes: int = 8 << 30) -> TrainingSet:
    """Prepare every case once (resample, crop/pad, normalise) and cache it; reuse unchanged ones."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    ids, infos = [], []
    for _, row in tqdm(list(cases.iterrows()), desc="prepare cases", unit="case", disable=None if progress is None else not progress):
        cid = row["case_id"]
        fp = case_fingerprint(row, cfg, scheme)
        meta = cache_dir / f"{cid}.json"
        info = None
        if meta.is_file() and (cache_dir / f"{cid}.npz").is_file():
            try:
                prev = json.loads(meta.read_text(encoding="utf-8"))
                info = prev if prev.get("fingerprint") == fp else None
            except ValueError:
                info = None
        if info is None:
            pc = prepare_case(ds, row, cfg, scheme)
            with atomic_path(cache_dir / f"{cid}.npz", suffix=".npz") as tmp:
                with open(tmp, "wb") as fh:
                    # float16 halves the cache; its 1e-3 steps are far below the data's noise
                    np.savez(fh, image=pc.image.astype(np.float16), labels=pc.labels)
            info = {**pc.info, "fingerprint": fp, "affine": pc.affine.tolist(), "shape": list(pc.labels.shape)}
            write_json_atomic(meta, info)
        ids.append(cid)
        infos.append(info)
    check_grid_fits(ds.name, ids, infos, cfg)
    nbytes = sum(int(np.prod(i["shape"])) * (4 * 4 + 1) for i in infos)
    return TrainingSet(cache_dir, ids, infos, in_memory=nbytes <= memory_limit_bytes)


def healthy_mean_prior(ts: TrainingSet) -> np.ndarray:
    """The anatomical prior (4, X, Y, Z) float32 in [-1, 1]: per voxel and modality, the mean of the
    training cases over those where the voxel is healthy head tissue (conditioning label 1), so no
    case's tumour leaves a ghost in it; where no case has healthy tissue, the plain mean of all cases
    (-1 outside every head). One pass over the cases, so large sets are not held in memory.
    """
    total = count = plain = None
    for i in range(len(ts)):
        img, lab = ts.get(i)
        healthy = (lab == HEAD).astype(np.float64)
        if total is None:
            total, count, plain = np.zeros(img.shape), np.zeros(lab.shape), np.zeros(img.shape)
        total += img * healthy[None]
        count += healthy
        plain += img
    if total is None:
        raise SynthesisError("no training cases to build the prior from")
    mean = np.where(count[None] > 0, total / np.maximum(count, 1.0)[None], plain / len(ts))
    return mean.astype(np.float32)


def draw_batch(ts: TrainingSet, batch_size: int, cfg: DataConfig, generator: torch.Generator,
               prior: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Random cases with paired random flips (image and mask flipped together) and, with
    ``cfg.train_crop``, a random crop at the same place in both; all drawn from ``generator``.
    A ``prior`` (C, X, Y, Z) on the model grid is flipped and cropped with each draw (no extra draws).

    Returns (image (B, 4, X, Y, Z) float32, labels (B, X, Y, Z) long, prior (B, C, X, Y, Z) or None).
    """
    idx = torch.randint(len(ts), (batch_size,), generator=generator).tolist()
    flips = (torch.rand(batch_size, len(cfg.flip_axes), generator=generator) < cfg.flip_prob).tolist()
    crop = cfg.train_crop
    if crop is not None:
        starts = [[int(torch.randint(s - c + 1, (1,), generator=generator)) for s, c in zip(cfg.shape, crop, strict=True)]
                  for _ in range(batch_size)]
    images, labels, priors = [], [], []
    for k, (i, f) in enumerate(zip(idx, flips, strict=True)):
        img, lab = ts.get(i)
        pri = prior
        axes = [a for a, do in zip(cfg.flip_axes, f, strict=True) if do]
        if axes:
            img = np.flip(img, axis=[a + 1 for a in axes])
            lab = np.flip(lab, axis=axes)
            pri = None if pri is None else np.flip(pri, axis=[a + 1 for a in axes])
        if crop is not None:
            sl = tuple(slice(s0, s0 + c) for s0, c in zip(starts[k], crop, strict=True))
            img, lab = img[(slice(None), *sl)], lab[sl]
            pri = None if pri is None else pri[(slice(None), *sl)]
        images.append(torch.from_numpy(np.ascontiguousarray(img)))
        labels.append(torch.from_numpy(np.ascontiguousarray(lab)).long())
        if pri is not None:
            priors.append(torch.from_numpy(np.ascontiguousarray(pri, dtype=np.float32)))
    return torch.stack(images), torch.stack(labels), (torch.stack(priors) if priors else None)
