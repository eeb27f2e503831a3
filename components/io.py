"""NIfTI and file I/O at the edges: atomic writes, digests, affine-preserving save.

Every write goes to a temporary name in the destination folder and is renamed into place, so a
killed run never leaves a half-written file under its final name.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

CHUNK = 1 << 20
NIFTI_RE = re.compile(r"\.nii(\.gz)?$")  # a NIfTI file name: .nii or .nii.gz


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def stat_fingerprint(paths: list[Path], root: Path | None = None) -> str:
    """Cheap digest of a set of files from (relative path, size, mtime_ns).

    Used as a cache key for sources: it changes whenever a file is replaced, grown or touched,
    and costs one stat per file instead of reading gigabytes.
    """
    h = hashlib.sha256()
    for p in sorted(paths):
        st = p.stat()
        rel = p.relative_to(root) if root is not None else p
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it onto ``dest`` only if the block succeeds."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix or ".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; if the block succeeds it replaces ``final`` in one rename.

    This is how every case folder is written: a killed run leaves only a hidden ``.tmp-*`` folder
    (removed on the next run or ignored by readers), never a half-written case under its real name.
    If the block raises, ``final`` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_temp(folder: str | os.PathLike, recursive: bool = True) -> int:
    """Delete what a killed writer left: hidden temp files of :func:`atomic_path` and ``.tmp-*``
    folders of :func:`atomic_dir` (never a finished file, which is renamed to a visible name)."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    n = 0
    for p in sorted(folder.rglob(".*") if recursive else folder.glob(".*"), reverse=True):
        if p.is_dir() and p.name.startswith(".tmp-"):
            shutil.rmtree(p, ignore_errors=True)
            n += 1
        elif p.is_file() and p.name.count(".") >= 2:
            p.unlink(missing_ok=True)
            n += 1
    return n


def write_case_volumes(folder: Path, case_id: str, volumes: dict[str, tuple[np.ndarray, Any]], affine: np.ndarray,
                       prefix: str = "") -> dict[str, str]:
    """Save ``<case_id>-<key>.nii.gz`` for each ``key: (array, dtype)`` into ``folder``.

    Returns the manifest entries: ``key`` -> ``prefix + file name`` and ``sha256_<key>`` -> digest.
    """
    row: dict[str, str] = {}
    for key, (arr, dtype) in volumes.items():
        f = folder / f"{case_id}-{key}.nii.gz"
        save_nifti(f, arr, affine, dtype=dtype)
        row[key] = f"{prefix}{f.name}"
        row[f"sha256_{key}"] = sha256_file(f)
    return row


def write_bytes_atomic(dest: str | os.PathLike, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(dest: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(dest, text.encode("utf-8"))


def write_json_atomic(dest: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(dest, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def link_or_copy(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Place ``src``'s exact bytes at ``dest`` (hard link when possible, else copy), atomically."""
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def nifti_claimed_and_held_bytes(path: str | os.PathLike) -> tuple[int, int, str]:
    """(bytes the header claims, bytes the file can hold, a description of the claim), from the header alone.

    The claim is the voxel offset plus shape x data type; what the file holds is its size, or for a
    gzip file the uncompressed size its trailer records (modulo 2**32, as gzip stores it). Lets a
    reader refuse a corrupt header before it allocates what the header says.
    """
    path = Path(path)
    img = nib.load(str(path))  # reads the header only; the data stay on disk
    hdr = img.header
    shape = tuple(int(v) for v in hdr.get_data_shape())
    dtype = np.dtype(hdr.get_data_dtype())
    offset = int(getattr(img.dataobj, "offset", 0) or hdr.get_data_offset())  # nibabel zeroes the header's copy
    claimed = offset + int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    size = path.stat().st_size
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
        if gz:
            fh.seek(-4, os.SEEK_END)
            held = int.from_bytes(fh.read(4), "little")
            if claimed > held and (claimed - held) % 2**32 == 0:
                held = claimed  # a stream over 4 GiB: the trailer wraps, and this size is consistent
        else:
            held = size
    if gz and claimed > held:
        held = _gunzipped_size(path, claimed)  # the trailer covers only a multi-member file's last member
    return claimed, held, f"shape {shape} {dtype.name}"


def _gunzipped_size(path: Path, enough: int, chunk: int = 1 << 20) -> int:
    """Bytes the gzip file decompresses to, counted in chunks (constant memory), stopping at ``enough``."""
    n = 0
    try:
        with gzip.open(path, "rb") as fh:
            while n < enough:
                block = fh.read(chunk)
                if not block:
                    break
                n += len(block)
    except (OSError, EOFError):  # truncated or corrupt: what could be read is what it holds
        pass
    return n


def nifti_from_bytes(data: bytes, name: str = "") -> nib.Nifti1Image:
    """Parse NIfTI-1/2 bytes (gzipped or not) fully into memory.

    Decompressing the whole stream here is what detects truncated archives.
    """
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    fh = nib.FileHolder(fileobj=io.BytesIO(data))
    header_size = int(np.frombuffer(data[:4], dtype="<i4")[0]) if len(data) >= 4 else 0
    klass = nib.Nifti2Image if header_size in (540, 469893120) else nib.Nifti1Image
    return klass.from_file_map({"header": fh, "image": fh})


def nifti_suffix(path: str | os.PathLike) -> str:
    """``.nii.gz`` or ``.nii``: nibabel compresses by the name it writes to, so a temp name keeps the suffix."""
    return ".nii.gz" if str(path).endswith(".gz") else ".nii"


def save_nifti(
    dest: str | os.PathLike,
    array: np.ndarray,
    affine: np.ndarray,
    header: nib.Nifti1Header | None = None,
    dtype: Any = None,
) -> None:
    """Write a NIfTI with the given affine (sform and qform both set), atomically."""
    arr = np.asarray(array)
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    hdr = header.copy() if header is not None else nib.Nifti1Header()
    img = nib.Nifti1Image(arr, affine, header=hdr)
    img.set_data_dtype(arr.dtype)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    # Intensities are stored as they are: no scaling slope from a source header.
    img.header.set_slope_inter(1.0, 0.0)
    with atomic_path(dest, suffix=nifti_suffix(dest)) as tmp:
        nib.save(img, tmp)


def load_nifti(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Return (array, affine, spacing in mm) of a 3-D NIfTI."""
    img = nib.load(str(path))
    arr = np.asanyarray(img.dataobj)
    return arr, img.affine.copy(), tuple(float(z) for z in img.header.get_zooms()[:3])


def save_like(dest: str | os.PathLike, array: np.ndarray, ref: nib.Nifti1Image, dtype: Any = None) -> None:
    """Write ``array`` with ``ref``'s affine and header (qform/sform codes kept), atomically."""
    arr = np.asarray(array)
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    hdr = ref.header.copy()
    img = type(ref)(arr, ref.affine, header=hdr)
    img.set_data_dtype(arr.dtype)
    img.header.set_slope_inter(1.0, 0.0)
    if len(arr.shape) == 3:
        img.header.set_dim_info(None, None, None)
    with atomic_path(dest, suffix=nifti_suffix(dest)) as tmp:
        nib.save(img, tmp)


def move_aside(folder: str | os.PathLike) -> Path:
    """Rename ``folder`` to ``<name>.replaced-<UTC time>`` beside it (kept, never deleted): how every
    synthesizer sets aside a model trained with other settings. Returns the new path."""
    import datetime as _dt

    folder = Path(folder)
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    aside = folder.with_name(f"{folder.name}.replaced-{stamp}")
    os.replace(folder, aside)
    return aside
