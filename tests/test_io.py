"""components/io.py on small real files: NIfTI round trips, atomic writes, digests, links, the header guard."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from components.io import (
    CHUNK,
    NIFTI_RE,
    atomic_dir,
    atomic_path,
    link_or_copy,
    load_nifti,
    nifti_claimed_and_held_bytes,
    nifti_from_bytes,
    remove_stale_temp,
    save_like,
    save_nifti,
    sha256_bytes,
    sha256_file,
    stat_fingerprint,
    write_bytes_atomic,
    write_case_volumes,
    write_json_atomic,
    write_text_atomic,
)


class Boom(RuntimeError):
    pass


def rotated_affine(spacing=(0.9, 1.2, 2.5), degrees=30.0, origin=(10.3, -20.7, 5.1)) -> np.ndarray:
    """Rotation about two axes times an anisotropic spacing, plus an origin.

    NIfTI-1 stores the sform in float32, so the affine is made float32-representable: then "kept"
    can mean bit for bit.
    """
    t = np.deg2rad(degrees)
    rz = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(t / 2), -np.sin(t / 2)], [0, np.sin(t / 2), np.cos(t / 2)]])
    a = np.eye(4)
    a[:3, :3] = rz @ rx @ np.diag(spacing)
    a[:3, 3] = origin
    return a.astype(np.float32).astype(np.float64)


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- NIfTI save / load
@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.uint8, np.float64])
def test_save_load_round_trip_keeps_array_dtype_and_rotated_anisotropic_affine(tmp_path, dtype):
    rng = np.random.default_rng(0)
    arr = (rng.random((7, 6, 5)) * 200).astype(dtype)
    aff = rotated_affine()
    assert not np.allclose(aff[:3, :3], np.diag(np.diag(aff[:3, :3])))  # really rotated
    f = tmp_path / "vol.nii.gz"
    save_nifti(f, arr, aff)
    back, back_aff, spacing = load_nifti(f)
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, arr)
    np.testing.assert_array_equal(back_aff, aff)
    np.testing.assert_allclose(spacing, (0.9, 1.2, 2.5), rtol=1e-6)
    hdr = nib.load(str(f)).header
    assert int(hdr["sform_code"]) == 1 and int(hdr["qform_code"]) == 1
    np.testing.assert_allclose(hdr.get_qform(), aff, atol=1e-5)  # the qform says the same (to quaternion precision)
    assert listing(tmp_path) == ["vol.nii.gz"]  # no temp file beside it


@pytest.mark.parametrize("writer", ["save_nifti", "save_like"])
def test_a_plain_nii_destination_is_written_as_a_readable_uncompressed_nifti(tmp_path, writer):
    arr = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    f = tmp_path / "vol.nii"
    if writer == "save_nifti":
        save_nifti(f, arr, rotated_affine())
    else:
        save_like(f, arr, nib.Nifti1Image(arr, rotated_affine()))
    assert f.read_bytes()[:2] != b"\x1f\x8b"
    np.testing.assert_array_equal(load_nifti(f)[0], arr)


def test_save_nifti_casts_to_the_requested_dtype(tmp_path):
    arr = np.array([[[0.0, 1.0], [250.0, 3.0]]], dtype=np.float64)
    save_nifti(tmp_path / "seg.nii.gz", arr, np.eye(4), dtype=np.uint8)
    back, _, _ = load_nifti(tmp_path / "seg.nii.gz")
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, arr.astype(np.uint8))


def test_save_nifti_stores_intensities_as_given_even_with_a_scaled_source_header(tmp_path):
    hdr = nib.Nifti1Header()
    hdr.set_slope_inter(2.0, 10.0)
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    save_nifti(tmp_path / "x.nii.gz", arr, np.eye(4), header=hdr)
    back, _, _ = load_nifti(tmp_path / "x.nii.gz")
    np.testing.assert_array_equal(back, arr)
    assert nib.load(str(tmp_path / "x.nii.gz")).header.get_slope_inter() in ((1.0, 0.0), (None, None))


def test_save_like_keeps_the_reference_affine_and_codes(tmp_path):
    aff = rotated_affine(spacing=(1.0, 1.0, 3.0), degrees=-20.0)
    ref = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), aff)
    ref.set_sform(aff, code=2)
    ref.set_qform(aff, code=1)
    seg = np.zeros((4, 4, 4), np.uint8)
    seg[1:3, 1:3, 1:3] = 3
    save_like(tmp_path / "seg.nii.gz", seg, ref)
    img = nib.load(str(tmp_path / "seg.nii.gz"))
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), seg)
    np.testing.assert_array_equal(img.affine, aff)
    assert int(img.header["sform_code"]) == 2 and int(img.header["qform_code"]) == 1


def test_write_case_volumes_names_files_and_records_their_digests(tmp_path):
    seg = np.zeros((3, 3, 3), np.float32)
    seg[1, 1, 1] = 2
    t1n = np.full((3, 3, 3), 7.0, np.float32)
    row = write_case_volumes(tmp_path, "BraTS-X-00001-000", {"seg": (seg, np.uint8), "t1n": (t1n, None)},
                             rotated_affine(), prefix="cases/BraTS-X-00001-000/")
    assert listing(tmp_path) == ["BraTS-X-00001-000-seg.nii.gz", "BraTS-X-00001-000-t1n.nii.gz"]
    assert row["seg"] == "cases/BraTS-X-00001-000/BraTS-X-00001-000-seg.nii.gz"
    assert row["sha256_seg"] == sha256_file(tmp_path / "BraTS-X-00001-000-seg.nii.gz")
    assert row["sha256_t1n"] == sha256_file(tmp_path / "BraTS-X-00001-000-t1n.nii.gz")
    assert load_nifti(tmp_path / "BraTS-X-00001-000-seg.nii.gz")[0].dtype == np.uint8
    assert load_nifti(tmp_path / "BraTS-X-00001-000-t1n.nii.gz")[0].dtype == np.float32


def test_nifti_from_bytes_reads_plain_gzipped_and_nifti2(tmp_path):
    arr = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    aff = rotated_affine()
    save_nifti(tmp_path / "a.nii.gz", arr, aff)
    nib.save(nib.Nifti1Image(arr, aff), str(tmp_path / "a.nii"))
    nib.save(nib.Nifti2Image(arr, aff), str(tmp_path / "b.nii"))
    for name, klass in (("a.nii.gz", nib.Nifti1Image), ("a.nii", nib.Nifti1Image), ("b.nii", nib.Nifti2Image)):
        img = nifti_from_bytes((tmp_path / name).read_bytes(), name)
        assert type(img) is klass, name
        np.testing.assert_array_equal(np.asanyarray(img.dataobj), arr)
        np.testing.assert_allclose(img.affine, aff, atol=1e-5)


def test_nifti_from_bytes_refuses_a_truncated_archive(tmp_path):
    save_nifti(tmp_path / "a.nii.gz", np.random.default_rng(1).random((8, 8, 8)).astype(np.float32), np.eye(4))
    data = (tmp_path / "a.nii.gz").read_bytes()
    with pytest.raises(EOFError):
        nifti_from_bytes(data[: len(data) // 2])


# --------------------------------------------------------------------------- atomic writes
def test_atomic_path_replaces_the_file_when_the_block_succeeds(tmp_path):
    dest = tmp_path / "out.json"
    dest.write_text("old")
    with atomic_path(dest) as tmp:
        assert tmp.parent == tmp_path and tmp != dest and tmp.name.startswith(".out.json.")
        tmp.write_text("new")
        assert dest.read_text() == "old"  # nothing visible until the block ends
    assert dest.read_text() == "new"
    assert listing(tmp_path) == ["out.json"]


@pytest.mark.parametrize("existed", [True, False])
def test_atomic_path_keeps_the_old_file_and_no_temp_when_the_block_raises(tmp_path, existed):
    dest = tmp_path / "sub" / "out.bin"
    if existed:
        dest.parent.mkdir()
        dest.write_bytes(b"old bytes")
    with pytest.raises(Boom), atomic_path(dest, suffix=".nii.gz") as tmp:
        assert tmp.name.endswith(".nii.gz")
        tmp.write_bytes(b"half writ")
        raise Boom
    assert listing(dest.parent) == (["out.bin"] if existed else [])
    if existed:
        assert dest.read_bytes() == b"old bytes"


def test_atomic_dir_replaces_the_whole_folder_when_the_block_succeeds(tmp_path):
    final = tmp_path / "case"
    final.mkdir()
    (final / "stale.txt").write_text("from an older run")
    with atomic_dir(final) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".tmp-case-")
        (tmp / "a.txt").write_text("a")
        assert (final / "stale.txt").exists()
    assert listing(final) == ["a.txt"]
    assert listing(tmp_path) == ["case"]


def test_atomic_dir_keeps_the_old_folder_and_no_temp_when_the_block_raises(tmp_path):
    final = tmp_path / "case"
    final.mkdir()
    (final / "keep.txt").write_text("finished")
    with pytest.raises(Boom), atomic_dir(final) as tmp:
        (tmp / "half.txt").write_text("half")
        raise Boom
    assert listing(final) == ["keep.txt"] and (final / "keep.txt").read_text() == "finished"
    assert listing(tmp_path) == ["case"]
    with pytest.raises(Boom), atomic_dir(tmp_path / "new") as tmp:
        raise Boom
    assert listing(tmp_path) == ["case"]


def test_write_json_atomic_writes_numpy_and_paths_and_refuses_the_rest_leaving_the_old_file(tmp_path):
    dest = tmp_path / "d" / "info.json"
    write_json_atomic(dest, {"b": np.int64(3), "a": np.arange(3), "p": Path("x/y"), "f": np.float32(0.5)})
    text = dest.read_text()
    assert json.loads(text) == {"a": [0, 1, 2], "b": 3, "f": 0.5, "p": "x/y"}
    assert text.endswith("\n") and text.index('"a"') < text.index('"b"')  # sorted keys, one newline
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        write_json_atomic(dest, {"x": object()})
    assert dest.read_text() == text
    assert listing(dest.parent) == ["info.json"]


def test_write_text_and_bytes_atomic(tmp_path):
    write_text_atomic(tmp_path / "t.txt", "héllo")
    assert (tmp_path / "t.txt").read_bytes() == "héllo".encode()
    write_bytes_atomic(tmp_path / "t.txt", b"\x00\x01")
    assert (tmp_path / "t.txt").read_bytes() == b"\x00\x01"
    assert listing(tmp_path) == ["t.txt"]


def test_remove_stale_temp_deletes_what_a_killed_writer_left_and_nothing_finished(tmp_path):
    # What a killed run leaves: a temp file of atomic_path and a temp folder of atomic_dir, one level down.
    sub = tmp_path / "cases"
    sub.mkdir()
    (sub / ".x.nii.gz.abc123.nii.gz").write_bytes(b"half")
    (sub / ".tmp-case-abc").mkdir()
    (sub / ".tmp-case-abc" / "t1n.nii.gz").write_bytes(b"half")
    (tmp_path / ".manifest.parquet.zz.tmp").write_bytes(b"half")
    finished = [tmp_path / "manifest.parquet", sub / "a.nii.gz", tmp_path / ".gitignore"]
    for f in finished:
        f.write_bytes(b"done")
    assert remove_stale_temp(tmp_path, recursive=False) == 1
    assert (sub / ".tmp-case-abc").exists()
    assert remove_stale_temp(tmp_path) == 2
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        ".gitignore", "cases", "cases/a.nii.gz", "manifest.parquet"]
    assert remove_stale_temp(tmp_path / "missing") == 0


# --------------------------------------------------------------------------- digests and links
@pytest.mark.parametrize("size", [0, 1, CHUNK, 2 * CHUNK + 123])
def test_sha256_file_matches_hashlib(tmp_path, size):
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    f = tmp_path / "blob"
    f.write_bytes(data)
    assert sha256_file(f) == hashlib.sha256(data).hexdigest() == sha256_bytes(data)


def test_stat_fingerprint_is_order_free_and_changes_when_a_file_is_touched_or_grown(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"1")
    b.write_bytes(b"2")
    fp = stat_fingerprint([a, b], tmp_path)
    assert fp == stat_fingerprint([b, a], tmp_path)
    st = a.stat()
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    touched = stat_fingerprint([a, b], tmp_path)
    assert touched != fp
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert stat_fingerprint([a, b], tmp_path) == fp
    with open(a, "ab") as fh:
        fh.write(b"more")
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert stat_fingerprint([a, b], tmp_path) not in (fp, touched)
    assert stat_fingerprint([a, b]) != stat_fingerprint([a, b], tmp_path)  # relative names differ from absolute


def test_link_or_copy_places_identical_bytes_atomically(tmp_path):
    src = tmp_path / "src.nii.gz"
    save_nifti(src, np.arange(27, dtype=np.int16).reshape(3, 3, 3), rotated_affine())
    digest = sha256_file(src)
    dest = tmp_path / "out" / "deep" / "dest.nii.gz"
    link_or_copy(src, dest)
    assert dest.read_bytes() == src.read_bytes()
    dest2 = tmp_path / "out" / "other.nii.gz"
    dest2.write_bytes(b"an older export")
    link_or_copy(src, dest2)
    assert sha256_file(dest2) == digest == sha256_file(src)
    assert listing(tmp_path / "out") == ["deep", "other.nii.gz"]
    assert listing(dest.parent) == ["dest.nii.gz"]


def test_link_or_copy_of_a_missing_source_leaves_nothing(tmp_path):
    dest = tmp_path / "out" / "dest.nii.gz"
    dest.parent.mkdir()
    dest.write_bytes(b"old")
    with pytest.raises(FileNotFoundError):
        link_or_copy(tmp_path / "missing.nii.gz", dest)
    assert dest.read_bytes() == b"old"
    assert listing(dest.parent) == ["dest.nii.gz"]


# --------------------------------------------------------------------------- the header-size guard
def _lying_nifti(shape_claimed=(1000, 1000, 1000), n_held=64) -> bytes:
    """A NIfTI-1 whose header claims ``shape_claimed`` float32 voxels but which holds ``n_held`` of them."""
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.float32)
    hdr.set_data_shape(shape_claimed)
    hdr.set_data_offset(352)
    return hdr.binaryblock + b"\x00" * 4 + np.zeros(n_held, np.float32).tobytes()


def _honest(tmp_path: Path, name: str) -> Path:
    f = tmp_path / name
    img = nib.Nifti1Image(np.zeros((6, 5, 4), np.int16), np.eye(4))
    img.set_data_dtype(np.int16)
    nib.save(img, str(f))
    return f


@pytest.mark.parametrize("name", ["x.nii", "x.nii.gz"])
def test_guard_passes_an_honest_file(tmp_path, name):
    f = _honest(tmp_path, name)
    claimed, held, what = nifti_claimed_and_held_bytes(f)
    assert 6 * 5 * 4 * 2 <= claimed <= held == 352 + 6 * 5 * 4 * 2
    if name == "x.nii":
        assert held == f.stat().st_size
    assert what == "shape (6, 5, 4) int16"


@pytest.mark.parametrize("name", ["x.nii", "x.nii.gz"])
def test_guard_claim_includes_the_voxel_offset(tmp_path, name):
    claimed, held, _ = nifti_claimed_and_held_bytes(_honest(tmp_path, name))
    assert claimed == held == 352 + 6 * 5 * 4 * 2


@pytest.mark.parametrize("gz", [False, True])
def test_guard_sees_a_header_that_claims_far_more_than_the_file_holds(tmp_path, gz):
    data = _lying_nifti()
    f = tmp_path / ("liar.nii.gz" if gz else "liar.nii")
    f.write_bytes(gzip.compress(data) if gz else data)
    claimed, held, what = nifti_claimed_and_held_bytes(f)
    assert claimed >= 1000**3 * 4
    assert held == len(data) == 352 + 64 * 4
    assert what == "shape (1000, 1000, 1000) float32"


# --------------------------------------------------------------------------- names
@pytest.mark.parametrize("name, ok", [
    ("a.nii", True), ("a.nii.gz", True), ("BraTS-GLI-00000-000-t1n.nii.gz", True), ("dir/x.y.nii", True),
    ("a.nii.gz.tmp", False), ("a.nii.bak", False), ("a.nii.gzip", False), ("a.gz", False), ("a.niigz", False),
    ("a.nifti", False), ("a.nii.gz/", False), ("a.mgz", False), ("anii", False),
])
def test_nifti_re_matches_nii_and_nii_gz_only(name, ok):
    assert bool(NIFTI_RE.search(name)) is ok
    if ok:
        assert not NIFTI_RE.search(NIFTI_RE.sub("", name))  # the stem carries no extension left
