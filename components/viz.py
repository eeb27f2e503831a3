"""Pictures a person can check: PNG montages of cases (4 modalities + mask overlay, three planes)."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np

from components.io import atomic_path
from data_catalog import MODALITIES, Dataset, has_file

log = logging.getLogger(__name__)

PLANES = ("axial", "coronal", "sagittal")
# Fixed colours per label value so every montage reads the same way.
LABEL_COLOURS = {1: (1.0, 0.2, 0.2), 2: (0.2, 0.9, 0.2), 3: (1.0, 0.9, 0.1), 4: (0.2, 0.6, 1.0)}


def to_ras(arr: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder voxel axes to RAS for display; return the array and the per-axis spacing."""
    ornt = nib.orientations.io_orientation(affine)
    ras = nib.orientations.apply_orientation(arr, ornt)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    return ras, zooms[ornt[:, 0].astype(int)]


def _slices(vol: np.ndarray, centre: tuple[int, int, int]) -> dict[str, np.ndarray]:
    x, y, z = centre
    # Rotate so anterior/superior point up on screen.
    return {"axial": np.rot90(vol[:, :, z]), "coronal": np.rot90(vol[:, y, :]), "sagittal": np.rot90(vol[x, :, :])}


def _aspects(zooms: np.ndarray) -> dict[str, float]:
    return {"axial": zooms[1] / zooms[0], "coronal": zooms[2] / zooms[0], "sagittal": zooms[2] / zooms[1]}


def _window(img: np.ndarray) -> tuple[float, float]:
    nz = img[img > 0]
    if nz.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(nz, [0.5, 99.5])
    return float(lo), float(max(hi, lo + 1e-6))


def _overlay(seg2d: np.ndarray) -> np.ndarray:
    rgba = np.zeros((*seg2d.shape, 4), dtype=np.float32)
    for v, c in LABEL_COLOURS.items():
        m = seg2d == v
        rgba[m, :3] = c
        rgba[m, 3] = 0.45
    return rgba


def render_montage(cases: list[dict], out: Path, title: str = "") -> Path:
    """cases: dicts with 'case_id', 'images' {modality: (X,Y,Z)}, optional 'seg', and 'affine'.

    One block of three rows (planes) per case; columns: the modalities, then the last modality
    with the mask overlaid. Slices pass through the tumour centre (or the volume centre).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Modalities in canonical order; volumes keyed otherwise (e.g. a 'head' label) are shown as given.
    mods = [m for m in MODALITIES if m in cases[0]["images"]] or list(cases[0]["images"])
    ncols = len(mods) + 1
    nrows = 3 * len(cases)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.1 * ncols, 2.1 * nrows), squeeze=False)
    for ci, case in enumerate(cases):
        vols = {m: to_ras(case["images"][m], case["affine"]) for m in mods}
        seg = to_ras(case["seg"], case["affine"])[0] if case.get("seg") is not None else None
        zooms = next(iter(vols.values()))[1]
        shape = next(iter(vols.values()))[0].shape
        if seg is not None and (seg > 0).any():
            centre = tuple(int(round(c)) for c in np.argwhere(seg > 0).mean(0))
        else:
            centre = tuple(s // 2 for s in shape)
        asp = _aspects(zooms)
        seg_sl = _slices(seg, centre) if seg is not None else None
        for mi, m in enumerate([*mods, "overlay"]):
            src = vols[mods[-1] if m == "overlay" else m][0]
            lo, hi = _window(src)
            sl = _slices(src, centre)
            for pi, plane in enumerate(PLANES):
                ax = axes[3 * ci + pi, mi]
                ax.imshow(sl[plane], cmap="gray", vmin=lo, vmax=hi, aspect=asp[plane], interpolation="nearest")
                if m == "overlay" and seg_sl is not None:
                    ax.imshow(_overlay(seg_sl[plane]), aspect=asp[plane], interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if 3 * ci + pi == 0:
                    ax.set_title(f"{mods[-1]} + mask" if m == "overlay" else m, fontsize=9)
                if mi == 0:
                    ax.set_ylabel(f"{case['case_id']}\n{plane}" if pi == 1 else plane, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return out


def dataset_montage(ds: Dataset, out: Path | None = None, n_cases: int = 4, title: str | None = None) -> Path | None:
    """Montage of the first ``n_cases`` ok cases of a dataset (default: <dataset>/montage.png)."""
    rows = ds.ok_cases().head(n_cases)
    if rows.empty:
        return None
    cases = []
    for _, r in rows.iterrows():
        images, affine = {}, None
        for m in MODALITIES:
            if has_file(r, m):
                img = nib.load(str(ds.root / r[m]))
                images[m] = np.asanyarray(img.dataobj).astype(np.float32)
                affine = img.affine
        seg = None
        if has_file(r, "seg"):
            seg_img = nib.load(str(ds.root / r["seg"]))
            seg = np.asanyarray(seg_img.dataobj).astype(np.int16)
            affine = affine if affine is not None else seg_img.affine
        if not images and has_file(r, "head"):
            head_img = nib.load(str(ds.root / r["head"]))
            images = {"head": np.asanyarray(head_img.dataobj).astype(np.float32)}
            affine = head_img.affine
        if not images and seg is not None:
            images = {"seg": (seg > 0).astype(np.float32)}
        cases.append({"case_id": r["case_id"], "images": images, "seg": seg, "affine": affine})
    if not cases[0]["images"]:
        return None
    note = " (phantom: pipeline check, not BraTS)" if ds.info.get("kind") == "phantom" else ""
    return render_montage(cases, out or ds.root / "montage.png", title or f"{ds.name} [{ds.info.get('kind')}]{note}")
