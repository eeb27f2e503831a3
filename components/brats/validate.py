"""Checks of one file and one case before anything is written: header size, dimensions, one grid, labels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from components.brats.common import AFFINE_TOL_MM, CaseProblem
from components.io import (
    nifti_claimed_and_held_bytes,
    nifti_from_bytes,
)


# --------------------------------------------------------------------------- validation
@dataclass
class LoadedFile:
    path: Path
    data: bytes
    img: nib.Nifti1Image
    array: np.ndarray


def check_header_size(case_id: str, key: str, path: Path) -> None:
    """Refuse a file whose header claims more data than the file holds, before reading the data."""
    try:
        claimed, held, what = nifti_claimed_and_held_bytes(path)
    except Exception:  # an unreadable header is reported by the full read below, with its reason
        return
    if claimed > held:
        raise CaseProblem(
            f"case {case_id}: file {path.name} ({key}) is unreadable or truncated: its header claims {what} "
            f"({claimed / 2**20:,.1f} MiB), expected a file that holds that much data, found {held / 2**20:,.1f} MiB")


def load_file(case_id: str, key: str, path: Path) -> LoadedFile:
    check_header_size(case_id, key, path)
    try:
        data = path.read_bytes()
        img = nifti_from_bytes(data, path.name)
        arr = np.asanyarray(img.dataobj)
    except Exception as err:  # nibabel/gzip raise many types for broken files
        raise CaseProblem(
            f"case {case_id}: file {path.name} ({key}) is unreadable or truncated: expected a complete NIfTI, "
            f"found {type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no detail'}"
        ) from err
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        n_bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        raise CaseProblem(
            f"case {case_id}: file {path.name} ({key}) holds non-finite values: expected finite intensities, "
            f"found {n_bad} NaN/inf voxels"
        )
    return LoadedFile(path, data, img, arr)


def check_3d(case_id: str, key: str, ld: LoadedFile) -> None:
    if ld.array.ndim != 3:
        raise CaseProblem(
            f"case {case_id}: file {ld.path.name} ({key}) is not 3-D: expected shape (X, Y, Z), "
            f"found {ld.array.ndim}-D shape {tuple(ld.array.shape)}"
        )


def check_same_grid(case_id: str, ref_key: str, ref: LoadedFile, key: str, other: LoadedFile) -> None:
    if tuple(other.array.shape[:3]) != tuple(ref.array.shape[:3]):
        raise CaseProblem(
            f"case {case_id}: file {other.path.name} ({key}) has shape {tuple(other.array.shape[:3])}, "
            f"expected {tuple(ref.array.shape[:3])} as in {ref.path.name} ({ref_key})"
        )
    diff = float(np.max(np.abs(other.img.affine - ref.img.affine)))
    if diff > AFFINE_TOL_MM:
        raise CaseProblem(
            f"case {case_id}: file {other.path.name} ({key}) has an affine that differs from {ref.path.name} "
            f"({ref_key}) by up to {diff:.4g} mm: expected identical voxel-to-world mappings, "
            f"found spacing {voxel_spacing(other.img)} vs {voxel_spacing(ref.img)}"
        )


def check_labels(case_id: str, ld: LoadedFile, allowed: set[int], scheme_desc: str) -> np.ndarray:
    seg = ld.array
    if not np.issubdtype(seg.dtype, np.integer):
        rounded = np.rint(seg)
        if not np.array_equal(rounded, seg):
            raise CaseProblem(
                f"case {case_id}: file {ld.path.name} (seg) holds non-integer values: expected integer labels, "
                f"found e.g. {float(seg[rounded != seg].flat[0])}"
            )
        seg = rounded
    present = np.unique(seg).astype(np.int64)
    bad = sorted(set(present.tolist()) - allowed)
    if bad:
        raise CaseProblem(
            f"case {case_id}: file {ld.path.name} (seg) holds labels outside {scheme_desc}: expected a subset of "
            f"{sorted(allowed)}, found {present.tolist()}"
        )
    return present


def voxel_spacing(img: nib.Nifti1Image) -> list[float]:
    return [round(float(z), 6) for z in img.header.get_zooms()[:3]]


def orientation(img: nib.Nifti1Image) -> str:
    return "".join(nib.aff2axcodes(img.affine))
