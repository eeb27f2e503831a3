"""Mask augmentation: parameters drawn by ``sample_mask_params``, applied by ``apply_mask_params``.

TorchIO's split (a random transform samples parameters, a deterministic one applies them): the
parameters are a typed model (``components.masks.params.MaskParams``) stored as JSON in the manifest,
so any mask can be replayed exactly from its source seg, its head and its ``params``. Labels are only ever resampled
nearest-neighbour (order 0): no label value is invented.

Arrays are (X, Y, Z) on the source grid. ``seg`` holds tumour labels of the source label scheme
(0 background); ``head`` is the bool head/brain label (components.masks.head).

Transforms, in the order they are applied:
1. tumour (optional): elastic deformation + scaling about the tumour's centre of mass + relocation
   to a new centre inside a host head (the source's own head or another case's of the same split);
   the tumour is cut out of the source seg and pasted into the host head, whose old tumour (if any)
   is not carried over (only the host's head label is used).
2. left-right flip of the whole head (exact: an array flip, no resampling).
3. affine of the whole head (rotation, isotropic scale, translation) about the head's centre.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from components.masks.config import MaskAugmentConfig
from components.masks.params import (
    PARAMS_VERSION,
    AffineParams,
    ElasticParams,
    FlipParams,
    MaskParams,
    TumourParams,
)

log = logging.getLogger(__name__)

DEPTH_STEP = 2  # subsampling of the head depth map used to propose tumour centres


@dataclass
class MaskCase:
    """One source mask in memory: tumour labels, head label and where they come from."""

    case_id: str
    split: str
    seg: np.ndarray  # (X, Y, Z) uint8, source label scheme
    head: np.ndarray  # (X, Y, Z) bool
    spacing: tuple[float, float, float]
    lr_axis: int = 0  # voxel axis closest to scanner x (left-right)
    _depth: np.ndarray | None = field(default=None, repr=False)
    _head_centre: np.ndarray | None = field(default=None, repr=False)
    _tumour: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    _tumour_volume: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        if self.seg.shape != self.head.shape:
            raise ValueError(f"case {self.case_id}: seg shape {self.seg.shape} differs from head shape {self.head.shape}")
        if self.lr_axis not in (0, 1, 2):
            raise ValueError(f"case {self.case_id}: lr_axis must be 0, 1 or 2, got {self.lr_axis}")

    @property
    def depth(self) -> np.ndarray:
        """Distance in mm to the nearest non-head voxel, on the grid subsampled by ``DEPTH_STEP``.

        Voxel i of the full grid reads depth[i // DEPTH_STEP]. Only used to propose tumour centres
        (the checks decide), so a coarse map is enough and costs 1/8 of the full-grid EDT.
        """
        if self._depth is None:
            st = DEPTH_STEP
            # pad: the array border counts as outside the head
            sub = np.pad(self.head[::st, ::st, ::st], 1)
            d = ndi.distance_transform_edt(sub, sampling=[s * st for s in self.spacing])
            self._depth = d[1:-1, 1:-1, 1:-1].astype(np.float32)
        return self._depth

    @property
    def head_centre(self) -> np.ndarray:
        """Centre of mass of the head in voxels (the array centre when the head is empty)."""
        if self._head_centre is None:
            box = bbox(self.head)
            if box is None:
                self._head_centre = (np.array(self.head.shape, dtype=float) - 1) / 2.0
            else:
                crop = self.head[tuple(slice(a, b + 1) for a, b in zip(*box, strict=True))]
                self._head_centre = np.argwhere(crop).mean(0) + box[0]
        return self._head_centre.copy()

    @property
    def tumour_points(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(centre of mass in voxels, up to ~4000 tumour boundary voxel offsets from it), or None."""
        if self._tumour is None and (self.seg > 0).any():
            box = bbox(self.seg)
            crop = np.pad(self.seg[tuple(slice(a, b + 1) for a, b in zip(*box, strict=True))] > 0, 1)
            centre = np.argwhere(crop).mean(0) + box[0] - 1
            edge = crop & ~ndi.binary_erosion(crop)
            pts = np.argwhere(edge) + box[0] - 1 - centre
            self._tumour = (centre, pts[:: max(1, len(pts) // 4000)])
            self._tumour_volume = int(crop.sum())
        return self._tumour

    @property
    def tumour_volume(self) -> int:
        """Number of tumour voxels."""
        return self._tumour_volume if self.tumour_points is not None else 0


def lr_axis_from_affine(affine: np.ndarray) -> int:
    """Voxel axis that points most along the scanner's x (left-right) axis."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(np.asarray(affine))
    return int(np.flatnonzero(ornt[:, 0] == 0)[0])


def bbox(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Inclusive (low, high) voxel corners of the non-zero voxels, or None when there are none.

    Projections with any() instead of argwhere: ~10x faster on whole volumes.
    """
    ax = [np.flatnonzero(mask.any(axis=tuple(j for j in range(mask.ndim) if j != i))) for i in range(mask.ndim)]
    if any(a.size == 0 for a in ax):
        return None
    return np.array([a[0] for a in ax]), np.array([a[-1] for a in ax])


def sample_mask_params(
    rng: np.random.Generator,
    case: MaskCase,
    config: MaskAugmentConfig,
    hosts: Sequence[str] = (),
    get_host: Callable[[str], MaskCase] | None = None,
) -> MaskParams:
    """Draw one set of augmentation parameters for ``case`` (all randomness comes from ``rng``).

    hosts: case ids that may lend their head for a relocation; the caller restricts them to the
        source's split and grid, and a host of another split or grid raises ValueError here (a test
        case never lends anatomy to a train mask, nor vice versa).
    get_host: loads a host ``MaskCase`` by id (needed only when ``hosts`` is non-empty).
    Returns the parameters; ``apply_mask_params`` turns them into a mask deterministically.
    """
    sp = np.asarray(case.spacing, dtype=float)
    host_case = case.case_id
    tumour_params: TumourParams | None = None
    flip_params: FlipParams | None = None
    affine_params: AffineParams | None = None
    # Draw every random number in a fixed order whatever is applied, so one probability change
    # does not reshuffle the other transforms' draws.
    c = config
    u = rng.random(6)
    s = rng.uniform(*c.tumour_scale.scale)
    aniso = rng.uniform(1.0 - c.tumour_scale.anisotropy, 1.0 + c.tumour_scale.anisotropy, size=3)
    el_seed = int(rng.integers(2**31 - 1))
    el_mag = float(rng.uniform(*c.elastic.magnitude_mm))
    el_ctrl = float(rng.uniform(*c.elastic.control_mm))
    rot = rng.uniform(-c.affine.rotation_deg, c.affine.rotation_deg, size=3)
    iso = rng.uniform(*c.affine.scale)
    shift = rng.uniform(-c.affine.translation_mm, c.affine.translation_mm, size=3)
    scale = s * aniso if u[0] < c.tumour_scale.p else np.ones(3)
    elastic = ElasticParams(seed=el_seed, magnitude_mm=el_mag, control_mm=el_ctrl) if u[1] < c.elastic.p else None
    tumour = case.tumour_points
    host = case
    if tumour is not None:
        centre_src, edge = tumour
        centre_dst = centre_src.copy()
        if u[2] < c.relocate.p:
            if hosts and u[3] < c.relocate.p_other_case:
                if get_host is None:
                    raise ValueError("sample_mask_params: hosts were given without get_host to load them")
                host = get_host(str(hosts[int(rng.integers(len(hosts)))]))
                if host.split != case.split:
                    raise ValueError(f"host case {host.case_id} is in split {host.split!r}, source {case.case_id} in "
                                     f"{case.split!r}: a relocation may only borrow a head of the same split")
                if host.seg.shape != case.seg.shape or not np.allclose(host.spacing, case.spacing):
                    raise ValueError(f"host case {host.case_id} has grid {host.seg.shape}/{host.spacing}, "
                                     f"source {case.case_id} has {case.seg.shape}/{case.spacing}: hosts must share the grid")
                host_case = host.case_id
            centre_dst = _pick_centre(rng, case, host, edge, scale, elastic, c.relocate.depth_frac)
        if elastic is not None or not np.allclose(scale, 1.0) or not np.allclose(centre_dst, centre_src):
            tumour_params = TumourParams(
                centre_src_vox=[float(v) for v in centre_src],
                centre_dst_vox=[float(v) for v in centre_dst],
                scale=[float(v) for v in scale],
                elastic=elastic,
            )
    flip = u[4] < c.flip.p
    if flip:
        flip_params = FlipParams(axis=int(case.lr_axis))
    if u[5] < c.affine.p:
        centre = host.head_centre
        if flip:
            centre[case.lr_axis] = case.seg.shape[case.lr_axis] - 1 - centre[case.lr_axis]
        affine_params = AffineParams(
            centre_vox=[float(v) for v in centre],
            rotation_deg=[float(v) for v in rot],
            scale=float(iso),
            translation_mm=[float(v) for v in shift],
        )
    return MaskParams(
        version=PARAMS_VERSION, source_case=case.case_id, host_case=host_case,
        shape=[int(s) for s in case.seg.shape], spacing=[float(s) for s in sp],
        tumour=tumour_params, flip=flip_params, affine=affine_params,
    )


def _pick_centre(
    rng: np.random.Generator, case: MaskCase, host: MaskCase, edge: np.ndarray, scale: np.ndarray,
    elastic: ElasticParams | None, depth_frac: float, tries: int = 24,
) -> np.ndarray:
    """A new tumour centre inside ``host``'s head where the scaled tumour outline fits.

    Candidates: head voxels at least ``depth_frac`` x the tumour's equivalent radius deep. Up to
    ``tries`` of them are drawn; the first where every scaled boundary point lies deeper than the
    elastic margin wins, else the one with the most points inside. The checks still have the last word.
    """
    sp = np.asarray(case.spacing, dtype=float)
    depth = host.depth
    st = DEPTH_STEP
    vol_mm3 = float(case.tumour_volume) * float(np.prod(sp)) * float(np.prod(scale))
    r_eq = (3.0 * vol_mm3 / (4.0 * math.pi)) ** (1.0 / 3.0)
    flat = depth.ravel()
    cand = np.flatnonzero(flat >= depth_frac * r_eq)
    if cand.size == 0:  # tumour too big for this head at that depth: take the deepest region
        cand = np.flatnonzero(flat >= 0.8 * float(flat.max()))
    margin = 2.0 * elastic.magnitude_mm if elastic else 0.0
    offsets = edge * scale  # voxel offsets scale like mm offsets (scale is per axis)
    shape = np.array(depth.shape)
    full = np.array(host.head.shape) - 1
    best, best_inside = None, -1.0
    picks = rng.integers(cand.size, size=tries)
    for pick in picks:
        # centre of the coarse cell, clipped to the full grid
        centre = np.minimum(np.array(np.unravel_index(int(cand[int(pick)]), depth.shape), dtype=float) * st
                            + (st - 1) / 2.0, full)
        q = np.rint(centre + offsets).astype(int) // st
        ok = np.all((q >= 0) & (q < shape), axis=1)
        inside = np.zeros(len(q), dtype=bool)
        inside[ok] = depth[q[ok, 0], q[ok, 1], q[ok, 2]] > margin
        frac = float(inside.mean()) if len(inside) else 1.0
        if frac > best_inside:
            best, best_inside = centre, frac
        if frac >= 1.0:
            break
    return best


@functools.lru_cache(maxsize=64)
def _control_lattice(seed: int, n: tuple[int, int, int], magnitude_mm: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((3, *n)) * magnitude_mm


def _bspline_weights(t: np.ndarray, n: int) -> np.ndarray:
    """(len(t), n) weights of the uniform cubic B-spline basis at lattice coordinates ``t``.

    B(d) = (4 - 6d^2 + 3|d|^3)/6 for |d| < 1, (2 - |d|)^3/6 for 1 <= |d| < 2, else 0
    (de Boor; the kernel of ITK's BSplineTransform that TorchIO's elastic deformation uses).
    """
    d = np.abs(t[:, None] - np.arange(n)[None, :])
    w = np.where(d < 1.0, (4.0 - 6.0 * d**2 + 3.0 * d**3) / 6.0, np.where(d < 2.0, (2.0 - d) ** 3 / 6.0, 0.0))
    return w


def _gather_nearest(labels: np.ndarray, coords: Sequence[np.ndarray]) -> np.ndarray:
    """labels[round(coords)] with 0 outside the array (nearest-neighbour resampling of labels).

    coords: three arrays of one (broadcast) shape, input voxel coordinates along axes 0, 1, 2.
    Written with numpy rather than scipy's map_coordinates/affine_transform(order=0): those cost
    ~100-200 ns per voxel for order 0 here; float32 rint + int32 flat index + one take is ~10x
    faster with the same semantics (no interpolation: every output value is an input label).
    """
    shape = labels.shape
    strides = (shape[1] * shape[2], shape[2], 1)
    flat = valid = None
    for c, n, st in zip(coords, shape, strides, strict=True):
        ii = np.rint(np.asarray(c, dtype=np.float32)).astype(np.int32)
        ok = ii.view(np.uint32) < n  # negative indices wrap to huge unsigned values
        ii *= st
        flat = ii if flat is None else flat + ii
        valid = ok if valid is None else valid & ok
    out = np.take(labels.ravel(), flat, mode="clip")
    out[~valid] = 0
    return out


def _warp_tumour(seg: np.ndarray, t: TumourParams, spacing: np.ndarray) -> np.ndarray:
    """Elastic + scale + move the tumour labels of ``seg``; returns a new (X, Y, Z) label array.

    For each output voxel x (mm offset p = (x - c_dst) * spacing from the new centre), the source
    position is c_src + (p + u(p)) / (scale * spacing), sampled nearest-neighbour. u is a smooth
    displacement field: a tensor-product cubic B-spline over Gaussian control-point displacements
    (std ``magnitude_mm``) on a lattice of spacing ``control_mm`` around the tumour.

    Written here rather than with MONAI's Rand3DElastic: that draws and Gaussian-smooths a noise
    field over the whole volume; a B-spline limited to the tumour's bounding box, evaluated
    separably (three small matrix products), is ~100x less work, and the field is regenerated
    exactly from its stored seed.
    """
    shape = np.array(seg.shape)
    c_src = np.asarray(t.centre_src_vox, dtype=float)
    c_dst = np.asarray(t.centre_dst_vox, dtype=float)
    scale = np.asarray(t.scale, dtype=float)
    el = t.elastic
    box = bbox(seg)
    if box is None:
        raise ValueError("apply_mask_params: params move a tumour but the seg has no tumour voxel; "
                         "was it drawn for another case?")
    lo, hi = box
    # Output box: the source box mapped forward, plus the largest plausible displacement.
    off_lo = (lo - 0.5 - c_src) * spacing * scale
    off_hi = (hi + 0.5 - c_src) * spacing * scale
    margin_mm = 3.0 * el.magnitude_mm if el else 0.0
    out_lo = np.floor(c_dst + (off_lo - margin_mm) / spacing).astype(int) - 1
    out_hi = np.ceil(c_dst + (off_hi + margin_mm) / spacing).astype(int) + 1
    out_lo = np.clip(out_lo, 0, shape - 1)
    out_hi = np.clip(out_hi, 0, shape - 1)
    out = np.zeros(seg.shape, dtype=np.uint8)
    if np.any(out_hi < out_lo):
        return out
    # mm offsets from the new centre along each axis of the output box (1-D; broadcast below)
    p1d = [(np.arange(a, b + 1, dtype=np.float64) - c) * s for a, b, c, s in zip(out_lo, out_hi, c_dst, spacing, strict=True)]
    ax_shape = [(-1, 1, 1), (1, -1, 1), (1, 1, -1)]
    denom = spacing * scale  # mm offset -> source voxel offset
    coords: list[np.ndarray] = [(c + p / d).reshape(sh) for p, c, d, sh in zip(p1d, c_src, denom, ax_shape, strict=True)]
    if el:
        cm = float(el.control_mm)
        # lattice node 0 sits two spacings before the box so every output point has full support
        starts = [p[0] - 2.0 * cm for p in p1d]
        n = tuple(int(np.ceil((p[-1] - p[0]) / cm)) + 5 for p in p1d)
        lattice = _control_lattice(int(el.seed), n, float(el.magnitude_mm))
        w = [_bspline_weights((p - s0) / cm, k) for p, s0, k in zip(p1d, starts, n, strict=True)]
        # u_k[a,b,c] = sum_ijl w0[a,i] w1[b,j] w2[c,l] lattice[k,i,j,l], one axis at a time. einsum's
        # own loops, not BLAS: these products are tiny and a multi-threaded BLAS on busy cores spends
        # 20-50x longer synchronising than computing.
        for k in range(3):
            t = np.einsum("ijl,cl->ijc", lattice[k], w[2])
            t = np.einsum("bj,ijc->ibc", w[1], t)
            u = np.einsum("ai,ibc->abc", w[0], t)
            coords[k] = (coords[k] + u / denom[k]).astype(np.float32)
    warped = _gather_nearest(np.asarray(seg, dtype=np.uint8), coords)
    out[tuple(slice(a, b + 1) for a, b in zip(out_lo, out_hi, strict=True))] = warped
    return out


def _rotation_matrix(deg: Sequence[float]) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_euler("xyz", list(deg), degrees=True).as_matrix()


def affine_voxel_map(a: AffineParams | Mapping[str, Any], spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(matrix M, offset o) of the ``params.affine`` transform y = c + t + s R (x - c) (mm), as the
    pull-back from an output voxel y to its input voxel x = M y + o (scipy.ndimage.affine_transform's
    convention)."""
    a = a if isinstance(a, AffineParams) else AffineParams.model_validate(a)
    spacing = np.asarray(spacing, dtype=float)
    s_mat = np.diag(spacing)
    s_inv = np.diag(1.0 / spacing)
    rot = _rotation_matrix(a.rotation_deg)
    s = float(a.scale)
    c = spacing * np.asarray(a.centre_vox, dtype=float)
    t = np.asarray(a.translation_mm, dtype=float)
    # output voxel y -> input voxel x = S^-1 (c + R^T (S y - c - t) / s) = M y + o
    matrix = s_inv @ rot.T @ s_mat / s
    offset = s_inv @ (c - rot.T @ (c + t) / s)
    return matrix, offset


def head_transform_kind(params: MaskParams | Mapping[str, Any] | None) -> str:
    """Which whole-head transforms ``params`` apply: "none", "flip", "affine" or "affine+flip".

    The tumour-local ops (elastic, scaling, relocation) move no anatomy and do not count. No params
    (None or {}: a real mask) apply none.
    """
    p = MaskParams.coerce(params)
    kinds = [k for k in ("affine", "flip") if p is not None and getattr(p, k) is not None]
    return "+".join(kinds) or "none"


def head_voxel_map(params: MaskParams | Mapping[str, Any] | None) -> np.ndarray | None:
    """4x4 homogeneous map from a voxel of the mask ``apply_mask_params`` makes to the voxel of the
    host head it was resampled from: the inverse of the whole-head flip then affine, in the source
    grid's voxels. None when ``params`` apply neither (the head is the host's, untouched).
    """
    p = MaskParams.coerce(params)
    if p is None or head_transform_kind(p) == "none":
        return None
    # composed as 4x4 matrices by hand: scipy and MONAI apply such a map but build none from these params
    out = np.eye(4)
    if p.affine is not None:
        out[:3, :3], out[:3, 3] = affine_voxel_map(p.affine, p.spacing)
    if p.flip is not None:
        ax = int(p.flip.axis)
        flip = np.eye(4)
        flip[ax, ax], flip[ax, 3] = -1.0, float(p.shape[ax]) - 1.0  # x -> n - 1 - x, as np.flip
        out = flip @ out  # the flip is applied first, so it is undone last
    return out


def _affine_labels(labels: np.ndarray, a: AffineParams, spacing: np.ndarray) -> np.ndarray:
    """Resample a label array under y = c + t + s R (x - c) (mm), nearest-neighbour.

    Only the output box that the input's non-zero box maps to is computed (the rest is 0).
    """
    matrix, offset = affine_voxel_map(a, spacing)
    out = np.zeros(labels.shape, dtype=labels.dtype)
    box = bbox(labels)
    if box is None:
        return out
    lo, hi = box[0] - 1, box[1] + 1
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])], float)
    fwd = np.linalg.solve(matrix, (corners - offset).T).T  # input corners -> output positions
    shape = np.array(labels.shape)
    o_lo = np.clip(np.floor(fwd.min(0)).astype(int) - 1, 0, shape - 1)
    o_hi = np.clip(np.ceil(fwd.max(0)).astype(int) + 1, 0, shape - 1)
    if np.any(o_hi < o_lo):
        return out
    ys = [np.arange(a_, b_ + 1, dtype=np.float64) for a_, b_ in zip(o_lo, o_hi, strict=True)]
    ax_shape = [(-1, 1, 1), (1, -1, 1), (1, 1, -1)]
    yb = [y.reshape(sh) for y, sh in zip(ys, ax_shape, strict=True)]
    # separable: a 2-D partial sum plus a 1-D term, broadcast once into a float32 volume per axis
    coords = [(matrix[i, 0] * yb[0] + matrix[i, 1] * yb[1]).astype(np.float32)
              + (matrix[i, 2] * yb[2] + offset[i]).astype(np.float32) for i in range(3)]
    out[tuple(slice(a_, b_ + 1) for a_, b_ in zip(o_lo, o_hi, strict=True))] = _gather_nearest(labels, coords)
    return out


def apply_mask_params(
    seg: np.ndarray,
    head: np.ndarray,
    params: MaskParams | Mapping[str, Any],
    host_head: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``params`` (from ``sample_mask_params``, or their JSON read back) deterministically.

    seg: (X, Y, Z) tumour labels of the source case; head: its (X, Y, Z) bool head label.
    host_head: the head of ``params.host_case`` when it is another case (required then).
    Returns (seg uint8, head bool), both (X, Y, Z). Pure function of its inputs.
    """
    params = MaskParams.parse(params)
    seg = np.asarray(seg)
    head = np.asarray(head, dtype=bool)
    shape = tuple(params.shape)
    if seg.shape != shape or head.shape != shape:
        raise ValueError(f"apply_mask_params: params were drawn for shape {shape}, got seg {seg.shape} and head {head.shape}")
    if seg.size and seg.max() > 127:
        raise ValueError(f"apply_mask_params: seg values must be < 128 (tumour labels), found {int(seg.max())}")
    spacing = np.asarray(params.spacing, dtype=float)
    if params.host_case != params.source_case:
        if host_head is None:
            raise ValueError(f"params of {params.source_case} relocate the tumour into {params.host_case}'s head: "
                             "pass that head as host_head")
        host = np.asarray(host_head, dtype=bool)
        if host.shape != shape:
            raise ValueError(f"host head {params.host_case} has shape {host.shape}, expected {shape}")
    else:
        host = head
    out_seg = _warp_tumour(seg, params.tumour, spacing) if params.tumour is not None else seg.astype(np.uint8)
    out_head = host
    if params.flip is not None:
        ax = int(params.flip.axis)
        out_seg = np.flip(out_seg, axis=ax)
        out_head = np.flip(out_head, axis=ax)
    if params.affine is not None:
        # One resampling for both labels: code = 2 * seg + head, split afterwards.
        code = (out_seg.astype(np.uint8) << 1) | out_head.astype(np.uint8)
        code = _affine_labels(code, params.affine, spacing)
        out_seg, out_head = code >> 1, (code & 1).astype(bool)
    return np.ascontiguousarray(out_seg, dtype=np.uint8), np.ascontiguousarray(out_head, dtype=bool)
