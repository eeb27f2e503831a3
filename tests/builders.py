"""Small real NIfTI trees in every release layout, written by the tests themselves."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (24, 20, 16)
# A BraTS-like affine: LPS-ish axes and anisotropic spacing, so "affine kept" means something.
SPACING = (1.0, 1.2, 2.5)


def affine(spacing=SPACING) -> np.ndarray:
    a = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    a[:3, 3] = [10.0, 20.0, -5.0]
    return a


def seg_array(labels=(1, 2, 4), shape=SHAPE, seed=0) -> np.ndarray:
    """Nested tumour: outer label labels[1], core labels[2], necrosis labels[0]."""
    rng = np.random.default_rng(seed)
    seg = np.zeros(shape, dtype=np.uint8)
    c = np.array(shape) // 2 + rng.integers(-1, 2, size=3)
    x, y, z = np.ogrid[: shape[0], : shape[1], : shape[2]]
    r2 = (x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2
    seg[r2 <= 36] = labels[1]
    seg[r2 <= 9] = labels[2]
    seg[r2 <= 2] = labels[0]
    return seg


def image_array(seed: int, shape=SHAPE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (100 + 20 * rng.standard_normal(shape)).astype(np.float32)


def save(path: Path, arr: np.ndarray, aff: np.ndarray | None = None, dtype=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = arr.astype(dtype) if dtype is not None else arr
    img = nib.Nifti1Image(arr, affine() if aff is None else aff)
    img.set_data_dtype(arr.dtype)
    nib.save(img, str(path))
    return path


LAYOUT_NAMES = {
    "brats2021": {"t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair", "seg": "seg"},
    "brats2023": {"t1n": "t1n", "t1c": "t1c", "t2w": "t2w", "t2f": "t2f", "seg": "seg"},
}
SOURCE_LABELS = {"brats2021": (1, 2, 4), "brats2023": (1, 2, 3), "brats2024_post": (1, 2, 3), "msd": (2, 1, 3)}


def case_id(layout: str, i: int) -> str:
    return {"brats2021": f"BraTS2021_{i:05d}", "msd": f"BRATS_{i:03d}"}.get(layout, f"BraTS-GLI-{i:05d}-000")


def write_folder_case(root: Path, layout: str, i: int, *, seg=True, skip=(), labels=None, seed=None) -> Path:
    """A case folder in the BraTS 2021 or 2023 naming (2024 post-treatment uses 2023 names)."""
    names = LAYOUT_NAMES["brats2021" if layout == "brats2021" else "brats2023"]
    sep = "_" if layout == "brats2021" else "-"
    cid = case_id(layout, i)
    d = root / cid
    seed = i if seed is None else seed
    for k, (key, suffix) in enumerate(names.items()):
        if key in skip or (key == "seg" and not seg):
            continue
        f = d / f"{cid}{sep}{suffix}.nii.gz"
        if key == "seg":
            s = seg_array(labels or SOURCE_LABELS[layout], seed=seed)
            if layout == "brats2024_post":
                s[0:3, 0:3, 0:3] = 4  # a resection cavity
            save(f, s, dtype=np.uint8)
        else:
            save(f, image_array(seed * 10 + k))
    (d / "notes.txt").write_text("not part of the layout")
    return d


def write_msd_case(task: Path, i: int, *, seg=True, split="Tr") -> Path:
    cid = case_id("msd", i)
    img = np.stack([image_array(i * 10 + c) + 1000 * c for c in range(4)], axis=-1)
    f = save(task / f"images{split}" / f"{cid}.nii.gz", img)
    # macOS resource forks that ship inside the MSD tar
    (task / f"images{split}" / f"._{cid}.nii.gz").write_bytes(b"\x00\x05\x16\x07junk")
    if seg:
        save(task / "labelsTr" / f"{cid}.nii.gz", seg_array(SOURCE_LABELS["msd"], seed=i), dtype=np.uint8)
    return f


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def gz_roundtrip_equal(a: Path, b: Path) -> bool:
    return gzip.decompress(a.read_bytes()) == gzip.decompress(b.read_bytes())
