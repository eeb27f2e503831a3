"""Label maps (and, for the segmenter, the four MRIs) on the model grid, and back onto a case's own grid.

A label map here is the class map of ``components.synthesis.data.condition_labels``: 0 background,
1 head, then one class per tumour label of the scheme (by rank). Cases are fitted to the model grid
as every synthesizer fits them (``fit_case``: resampled to ``data.spacing`` when set, cropped/padded
around the head to ``data.shape``) and cached under ``cache_dir`` (one ``.npz`` + ``.json`` per case,
keyed by a fingerprint of the files and the grid settings).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from components.io import atomic_path, load_nifti, stat_fingerprint, write_json_atomic
from components.labelldm.config import LabelLdmError
from components.progress import tqdm
from components.synthesis.config import DataConfig
from components.synthesis.data import (
    HEAD,
    FittedCase,
    case_fingerprint,
    condition_channels,
    condition_labels,
    derive_head,
    fit_case,
    head_extent,
    head_method,
    intensity_window,
    load_case,
    n_condition_channels,
    normalise,
    spacing_of,
)
from data_catalog import MODALITIES, Dataset, LabelScheme

log = logging.getLogger(__name__)

FORMAT = 1


def n_classes(scheme: LabelScheme) -> int:
    """Classes of a label map: background, head and one per tumour label."""
    return n_condition_channels(scheme)


def classes_to_seg(classes: np.ndarray, scheme: LabelScheme) -> tuple[np.ndarray, np.ndarray]:
    """Class map (X, Y, Z) -> (seg uint8 in ``scheme``'s values, head bool): the inverse of ``condition_labels``."""
    classes = np.asarray(classes)
    seg = np.zeros(classes.shape, np.uint8)
    for value, channel in condition_channels(scheme).items():
        seg[classes == channel] = value
    return seg, classes >= HEAD


def region_classes(scheme: LabelScheme) -> list[tuple[str, list[int], int]]:
    """The regions a segmenter predicts (``scheme.nnunet_regions``) as (name, class indices, label written back)."""
    if not scheme.nnunet_regions:
        raise LabelLdmError(f"label scheme {scheme.name!r} has no nnunet_regions in data_catalog/label_schemes.yaml; "
                            f"expected the regions a segmenter predicts (a canonical scheme has them)")
    channels = condition_channels(scheme)
    return [(name, [channels[v] for v in labels], out) for name, labels, out in scheme.nnunet_regions]


def to_source_grid(volume: np.ndarray, fc: FittedCase, affine: np.ndarray, shape: Sequence[int],
                   mode: str = "bilinear") -> np.ndarray:
    """(C, *model shape) -> (C, *shape) on the case's own grid: MONAI's inverse of the crop/pad, then (when the
    case was resampled to the model spacing) a resampling back to ``affine`` (``mode``: bilinear or nearest)."""
    out = fc.to_grid(np.asarray(volume, dtype=np.float32))
    if not fc.resampled:
        return out
    from monai.data import MetaTensor
    from monai.transforms import SpatialResample

    mt = MetaTensor(torch.as_tensor(out), affine=torch.as_tensor(fc.grid_affine, dtype=torch.float64))
    back = SpatialResample(mode=mode, padding_mode="zeros")(
        mt, dst_affine=torch.as_tensor(np.asarray(affine, dtype=np.float64)), spatial_size=tuple(int(s) for s in shape))
    return np.asarray(back.detach().cpu().numpy(), dtype=np.float32)


def load_mri(files: Mapping[str, str | Path] | Sequence[str | Path], case_id: str) -> tuple[np.ndarray, np.ndarray]:
    """The four modalities (``MODALITIES`` order: t1n, t1c, t2w, t2f) as (4, X, Y, Z) float32, and the affine."""
    if not isinstance(files, Mapping):
        if len(files) != len(MODALITIES):
            raise LabelLdmError(f"case {case_id}: {len(files)} image files given; expected {len(MODALITIES)} "
                                f"({', '.join(MODALITIES)})")
        files = dict(zip(MODALITIES, files, strict=True))
    vols, affine, first = [], None, None
    for m in MODALITIES:
        if m not in files:
            raise LabelLdmError(f"case {case_id}: no {m} file given; expected {', '.join(MODALITIES)}, "
                                f"found {sorted(files)}")
        arr, aff, _ = load_nifti(files[m])
        if arr.ndim != 3:
            raise LabelLdmError(f"case {case_id}: {files[m]} has shape {arr.shape}; expected a 3-D volume")
        if first is None:
            first, affine = arr.shape, aff
        elif arr.shape != first:
            raise LabelLdmError(f"case {case_id}: {files[m]} has shape {arr.shape}; expected {first} as its "
                                f"{MODALITIES[0]} file")
        vols.append(np.asarray(arr, dtype=np.float32))
    return np.stack(vols), affine


def fit_mri(images: np.ndarray, head: np.ndarray, affine: np.ndarray, cfg: DataConfig,
            seg: np.ndarray | None = None) -> tuple[FittedCase, np.ndarray]:
    """(fitted case, images (4, *model shape) in [-1, 1]: each modality windowed inside the head, -1 outside)."""
    fc = fit_case(images, np.zeros(head.shape, np.uint8) if seg is None else seg, head, affine, cfg)
    lo, hi = intensity_window(fc.images, fc.head, cfg.percentiles)
    return fc, normalise(fc.images, fc.head, lo, hi)


# --------------------------------------------------------------------------- prepared cases
@dataclass
class PreparedCases:
    """Cases on the model grid: class maps (X, Y, Z) uint8 and, when prepared with images, (4, X, Y, Z) MRIs."""

    cache_dir: Path
    case_ids: list[str]
    infos: list[dict[str, Any]]
    with_images: bool
    _memory: dict[int, tuple[np.ndarray, np.ndarray | None]]

    def __len__(self) -> int:
        return len(self.case_ids)

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(class map uint8, images float32 in [-1, 1] or None) of case ``i``."""
        if i in self._memory:
            return self._memory[i]
        return _read(self.cache_dir, self.case_ids[i], self.with_images)

    def draw(self, batch: int, cfg: DataConfig, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A random batch with random flips (label map and images flipped together), all drawn from ``generator``:
        (classes (B, X, Y, Z) long, images (B, 4, X, Y, Z) float32 or None)."""
        idx = torch.randint(len(self), (batch,), generator=generator).tolist()
        flips = (torch.rand(batch, len(cfg.flip_axes), generator=generator) < cfg.flip_prob).tolist()
        labels, images = [], []
        for i, f in zip(idx, flips, strict=True):
            lab, img = self.get(i)
            axes = [a for a, do in zip(cfg.flip_axes, f, strict=True) if do]
            if axes:
                lab = np.flip(lab, axis=axes)
                img = None if img is None else np.flip(img, axis=[a + 1 for a in axes])
            labels.append(torch.from_numpy(np.ascontiguousarray(lab)).long())
            if img is not None:
                images.append(torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)))
        return torch.stack(labels), (torch.stack(images) if images else None)


def _read(cache_dir: Path, cid: str, with_images: bool) -> tuple[np.ndarray, np.ndarray | None]:
    with np.load(cache_dir / f"{cid}.npz") as z:
        return z["labels"].astype(np.uint8), (z["image"].astype(np.float32) if with_images else None)


def _cached(cache_dir: Path, cid: str, fingerprint: str) -> dict[str, Any] | None:
    meta = cache_dir / f"{cid}.json"
    if not (meta.is_file() and (cache_dir / f"{cid}.npz").is_file()):
        return None
    try:
        prev = json.loads(meta.read_text(encoding="utf-8"))
    except ValueError:
        return None
    return prev if prev.get("fingerprint") == fingerprint else None


def _store(cache_dir: Path, cid: str, labels: np.ndarray, image: np.ndarray | None, info: dict[str, Any]) -> None:
    arrays = {"labels": labels.astype(np.uint8)}
    if image is not None:
        arrays["image"] = image.astype(np.float16)  # 1e-3 steps: far below the data's noise
    with atomic_path(cache_dir / f"{cid}.npz", suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    write_json_atomic(cache_dir / f"{cid}.json", info)


def _fit_one(cid: str, images: np.ndarray | None, seg: np.ndarray, head: np.ndarray, affine: np.ndarray,
             cfg: DataConfig, scheme: LabelScheme, where: str) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    if images is not None:
        fc, image = fit_mri(images, head, affine, cfg, seg=seg)
    else:
        fc, image = fit_case(None, seg, head, affine, cfg), None
    labels = condition_labels(fc.seg, fc.head, scheme, where=where)
    info = {"case_id": cid, "affine": fc.affine.tolist(), "source_affine": np.asarray(affine, float).tolist(),
            "source_shape": [int(s) for s in seg.shape], "resampled": fc.resampled,
            "lost_head_voxels": fc.lost_head_voxels, "lost_tumour_voxels": fc.lost_tumour_voxels,
            "head_voxels": int(fc.grid_head.sum()), "head_extent": head_extent(fc.grid_head),
            "tumour_voxels": int((labels > HEAD).sum())}
    return labels, image, info


def _finish(cache_dir: Path, ids: list[str], infos: list[dict[str, Any]], with_images: bool,
            memory_limit_bytes: int) -> PreparedCases:
    per_voxel = 1 + (16 if with_images else 0)
    nbytes = sum(int(np.prod(i["shape"])) * per_voxel for i in infos)
    memory = {i: _read(cache_dir, cid, with_images) for i, cid in enumerate(ids)} if nbytes <= memory_limit_bytes else {}
    return PreparedCases(cache_dir, ids, infos, with_images, memory)


def prepare_dataset_cases(ds: Dataset, rows: pd.DataFrame, cfg: DataConfig, scheme: LabelScheme, cache_dir: Path,
                          with_images: bool = False, progress: bool | None = None,
                          memory_limit_bytes: int = 4 << 30) -> PreparedCases:
    """Cases ``rows`` of ``ds`` (seg + head file, or seg + the four MRIs to derive the head from) on the model grid."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    ids, infos = [], []
    for _, row in tqdm(list(rows.iterrows()), desc=f"prepare {ds.name}", unit="case",
                       disable=None if progress is None else not progress):
        cid = str(row["case_id"])
        fp = hashlib.sha256(f"{case_fingerprint(row, cfg, scheme)}|images={with_images}|v{FORMAT}".encode()).hexdigest()
        info = _cached(cache_dir, cid, fp)
        if info is None:
            c = load_case(ds, row, with_images=with_images)
            labels, image, info = _fit_one(cid, c["images"], c["seg"], c["head"], c["affine"], cfg, scheme,
                                           f"dataset {ds.name!r}, case {cid}")
            info.update(fingerprint=fp, shape=list(labels.shape))
            _store(cache_dir, cid, labels, image, info)
        ids.append(cid)
        infos.append(info)
    return _finish(cache_dir, ids, infos, with_images, memory_limit_bytes)


def prepare_file_cases(cases: Mapping[str, Mapping[str, str | Path]], cfg: DataConfig, scheme: LabelScheme,
                       cache_dir: Path, progress: bool | None = None, memory_limit_bytes: int = 4 << 30) -> PreparedCases:
    """Cases given as files (``{case_id: {t1n, t1c, t2w, t2f, seg: path}}``) with their MRIs, on the model grid;
    the head is derived from the four MRIs (and the tumour), as the synthesizers derive it."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    ids, infos = [], []
    key = json.dumps({"data": cfg.model_dump(mode="json"), "scheme": scheme.name, "head": head_method(), "v": FORMAT},
                     sort_keys=True)
    for cid in tqdm(sorted(cases), desc="prepare cases", unit="case", disable=None if progress is None else not progress):
        files = cases[cid]
        if "seg" not in files:
            raise LabelLdmError(f"case {cid}: no seg file given; expected {', '.join((*MODALITIES, 'seg'))}, "
                                f"found {sorted(files)}")
        paths = [Path(files[k]) for k in (*MODALITIES, "seg")]
        fp = hashlib.sha256(f"{stat_fingerprint(paths)}|{key}".encode()).hexdigest()
        info = _cached(cache_dir, cid, fp)
        if info is None:
            images, affine = load_mri(files, cid)
            seg = np.asarray(load_nifti(files["seg"])[0])
            if seg.shape != images.shape[1:]:
                raise LabelLdmError(f"case {cid}: {files['seg']} has shape {seg.shape}; expected {images.shape[1:]} as "
                                    f"its images")
            unknown = sorted(set(np.unique(seg).astype(int).tolist()) - set(scheme.values))
            if unknown:
                raise LabelLdmError(f"case {cid}: {files['seg']} has labels {unknown}; expected {list(scheme.values)} "
                                    f"({scheme.name})")
            seg = seg.astype(np.uint8)
            head = derive_head(images, seg, spacing_of(affine))
            labels, image, info = _fit_one(cid, images, seg, head, affine, cfg, scheme, f"case {cid} ({files['seg']})")
            info.update(fingerprint=fp, shape=list(labels.shape))
            _store(cache_dir, cid, labels, image, info)
        ids.append(cid)
        infos.append(info)
    return _finish(cache_dir, ids, infos, True, memory_limit_bytes)
