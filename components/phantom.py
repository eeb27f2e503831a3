"""The embedded default dataset: BraTS-like cases built from the MNI152 2009a template (docs/design.md §6).

nilearn's wheel ships the template (T1, GM and WM probability maps, 1 mm, BSD-3 with the MNI
notice), so this runs offline. Each case: a tumour grown inside white matter (necrosis, an
enhancing rim, oedema spreading along WM; sometimes no necrosis, a second focus or, in the
post-treatment scheme, a resection cavity), contrasts as tissue fractions times relative
intensities jittered per case, one elastic deformation for all channels and the mask, a bias field
and Rician noise (MONAI transforms). For running and testing the pipeline, never for BraTS claims.
"""

from __future__ import annotations

import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from pydantic import Field, field_validator
from scipy import ndimage as ndi

from components.config_base import FrozenModel
from components.io import atomic_dir, write_case_volumes
from components.progress import tqdm
from components.seeds import derive_seed
from data_catalog import (
    MODALITIES,
    STATUS_OK,
    assign_split,
    dataset_dir,
    label_scheme_names,
    load_label_scheme,
    register_dataset,
)

log = logging.getLogger(__name__)

# Relative intensities (white matter = 1), docs/design.md §6. Keys: healthy tissues + tumour label names.
CONTRASTS: dict[str, dict[str, float]] = {
    "t1n": {"WM": 1.0, "GM": 0.69, "CSF": 0.31, "NCR": 0.40, "ED": 0.75, "ET": 0.80},
    "t1c": {"WM": 1.0, "GM": 0.69, "CSF": 0.31, "NCR": 0.40, "ED": 0.75, "ET": 1.45},
    "t2w": {"WM": 1.0, "GM": 1.43, "CSF": 3.6, "NCR": 3.0, "ED": 2.2, "ET": 1.6},
    "t2f": {"WM": 1.0, "GM": 1.15, "CSF": 0.15, "NCR": 0.9, "ED": 1.8, "ET": 1.5},
}
# The BraTS grid: 240 x 240 x 155 mm around the brain.
GRID_MM = (240.0, 240.0, 155.0)
WM_INTENSITY = 1000.0


class PhantomConfig(FrozenModel):
    """Settings of one phantom dataset (saved in dataset.json)."""

    cases: int = Field(8, ge=1)
    spacing: float = Field(2.0, gt=0.0, le=8.0, description="isotropic voxel size in mm")
    label_scheme: str = Field("brats2023", description="brats2023 or brats2024_post")

    @field_validator("label_scheme")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        known = label_scheme_names(canonical_only=True)
        if v not in known:
            raise ValueError(f"unknown label scheme {v!r}: expected one of {known}")
        return v
    seed: int = Field(0, ge=0)
    test_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    split_salt: str = "gliosynth"
    workers: int = Field(2, ge=1)
    p_no_necrosis: float = 0.2
    p_second_focus: float = 0.2
    p_cavity: float = 0.7  # post-treatment scheme only
    noise_range: tuple[float, float] = (0.01, 0.05)


# --------------------------------------------------------------------------- anatomy
def _template_files() -> dict[str, Path]:
    try:
        import nilearn
    except ImportError as err:  # pragma: no cover - nilearn is a pinned requirement
        raise RuntimeError("the phantom needs nilearn (it ships the MNI152 template): pip install nilearn") from err
    data = Path(nilearn.__file__).parent / "datasets" / "data"
    files = {
        "t1": data / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
        "gm": data / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
        "wm": data / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
    }
    for k, p in files.items():
        if not p.is_file():
            raise RuntimeError(f"nilearn {nilearn.__version__} does not ship the MNI152 {k} map at {p}")
    return files


@dataclass(frozen=True)
class Anatomy:
    """Healthy tissue fractions on the target grid. Arrays are (X, Y, Z) float32."""

    affine: np.ndarray
    brain: np.ndarray
    wm: np.ndarray
    gm: np.ndarray
    csf: np.ndarray

    @property
    def spacing(self) -> float:
        return float(abs(self.affine[0, 0]))


@functools.lru_cache(maxsize=4)
def load_anatomy(spacing: float) -> Anatomy:
    """Resample the template's tissue maps onto a BraTS-sized RAS grid of ``spacing`` mm."""
    files = _template_files()
    t1_img = nib.load(str(files["t1"]))
    t1 = np.asarray(t1_img.dataobj, dtype=np.float32)
    t1 /= max(float(t1.max()), 1e-6)
    brain_1mm = t1 > 0.2
    idx = np.argwhere(brain_1mm)
    centre_vox = (idx.min(0) + idx.max(0)) / 2.0
    centre_world = nib.affines.apply_affine(t1_img.affine, centre_vox)
    shape = tuple(int(round(g / spacing)) for g in GRID_MM)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = centre_world - spacing * (np.array(shape) - 1) / 2.0
    # target voxel -> template voxel
    m = np.linalg.inv(t1_img.affine) @ affine

    def resample(arr: np.ndarray) -> np.ndarray:
        return ndi.affine_transform(arr, m[:3, :3], offset=m[:3, 3], output_shape=shape, order=1, mode="constant")

    t1_r = resample(t1)
    gm = resample(np.asarray(nib.load(str(files["gm"])).dataobj, dtype=np.float32))
    wm = resample(np.asarray(nib.load(str(files["wm"])).dataobj, dtype=np.float32))
    gm /= max(float(gm.max()), 1e-6)
    wm /= max(float(wm.max()), 1e-6)
    brain = (t1_r > 0.2).astype(np.float32)
    brain = ndi.binary_fill_holes(brain > 0).astype(np.float32)
    gm *= brain
    wm *= brain
    total = gm + wm
    over = total > 1.0
    gm[over] /= total[over]
    wm[over] /= total[over]
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    return Anatomy(affine=affine, brain=brain, wm=wm.astype(np.float32), gm=gm.astype(np.float32),
                   csf=csf.astype(np.float32))


# --------------------------------------------------------------------------- tumour
def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field."""
    f = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox)
    return (f - f.mean()) / max(float(f.std()), 1e-6)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def _ellipsoid_distance(shape, centre, radii_mm, rot, spacing) -> np.ndarray:
    """Normalised ellipsoid distance (1 on the surface) on the grid, in physical units."""
    grids = np.meshgrid(*[(np.arange(n, dtype=np.float32) - c) * spacing for n, c in zip(shape, centre, strict=True)],
                        indexing="ij", sparse=True)
    d = np.zeros(shape, dtype=np.float32)
    for k in range(3):
        comp = rot[0, k] * grids[0] + rot[1, k] * grids[1] + rot[2, k] * grids[2]
        d += (comp / radii_mm[k]) ** 2
    return np.sqrt(d)


def sample_tumour(anat: Anatomy, scheme_name: str, cfg: PhantomConfig, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Draw a tumour label map (X, Y, Z uint8) in ``scheme_name`` and the parameters used."""
    scheme = load_label_scheme(scheme_name)
    names = {v: k for k, v in scheme.labels.items()}
    ncr, ed, et = scheme.labels.get("NCR", scheme.labels.get("NETC")), scheme.labels.get("ED", scheme.labels.get("SNFH")), scheme.label("ET")
    sp = anat.spacing
    shape = anat.brain.shape
    core_mask = ndi.binary_erosion(anat.wm > 0.9, iterations=max(1, int(round(8.0 / sp))))
    if not core_mask.any():
        core_mask = anat.wm > 0.5
    cand = np.argwhere(core_mask)
    noise = _smooth_noise(rng, shape, sigma_vox=4.0 / sp)
    seg = np.zeros(shape, dtype=np.uint8)
    params: dict[str, Any] = {"foci": []}
    n_foci = 2 if rng.random() < cfg.p_second_focus else 1
    necrosis = rng.random() >= cfg.p_no_necrosis
    for f in range(n_foci):
        centre = cand[rng.integers(len(cand))].astype(float)
        r_core = float(rng.uniform(8.0, 18.0)) * (0.6 if f else 1.0)
        rim = float(rng.uniform(2.0, 5.0))
        r_ed = r_core * float(rng.uniform(1.4, 2.2))
        axes = r_core * rng.uniform(0.75, 1.25, size=3)
        rot = _random_rotation(rng)
        d = _ellipsoid_distance(shape, centre, axes, rot, sp) + 0.15 * noise
        r = d * r_core  # approximately mm from the centre
        in_brain = anat.brain > 0.5
        edema = in_brain & ((r < r_ed) | ((r < r_ed * 1.5) & (anat.wm > 0.5)))
        core = in_brain & (r < r_core)
        inner = core & (r < r_core - rim)
        seg[edema & (seg == 0)] = ed
        seg[core] = et
        if necrosis:
            seg[inner] = ncr
        params["foci"].append({"centre_vox": centre.tolist(), "r_core_mm": r_core, "rim_mm": rim, "r_edema_mm": r_ed,
                               "axes_mm": axes.tolist()})
    params["necrosis"] = bool(necrosis)
    if "RC" in scheme.labels and rng.random() < cfg.p_cavity:
        f0 = params["foci"][0]
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        c = np.array(f0["centre_vox"]) + direction * (f0["r_core_mm"] / sp)
        r_cav = float(rng.uniform(6.0, 12.0))
        cav = _ellipsoid_distance(shape, c, r_cav * rng.uniform(0.8, 1.2, size=3), _random_rotation(rng), sp) < 1.0
        seg[cav & (anat.brain > 0.5)] = scheme.label("RC")
        params["cavity"] = {"centre_vox": c.tolist(), "r_mm": r_cav}
    params["labels"] = {names[v]: int((seg == v).sum()) for v in sorted(names)}
    return seg, params


# --------------------------------------------------------------------------- images
def render_images(anat: Anatomy, seg: np.ndarray, scheme_name: str, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Contrast synthesis: sum over tissues of fraction x relative intensity. Returns (4, X, Y, Z)."""
    scheme = load_label_scheme(scheme_name)
    tumour_keys = {}
    for lname, v in scheme.labels.items():
        key = {"NETC": "NCR", "SNFH": "ED", "RC": "CSF"}.get(lname, lname)
        tumour_keys[v] = key
    # Partial-volume fractions for tumour labels: a slightly smoothed indicator.
    fracs = {v: ndi.gaussian_filter((seg == v).astype(np.float32), 0.6) for v in tumour_keys}
    tumour_total = np.clip(sum(fracs.values()), 0.0, 1.0) if fracs else 0.0
    healthy = 1.0 - tumour_total
    texture = 1.0 + 0.1 * _smooth_noise(rng, seg.shape, 1.5)
    jitter = {m: {t: float(rng.uniform(0.85, 1.15)) for t in CONTRASTS[m]} for m in MODALITIES}
    for m in MODALITIES:
        jitter[m]["WM"] = 1.0
    out = np.zeros((len(MODALITIES), *seg.shape), dtype=np.float32)
    for i, m in enumerate(MODALITIES):
        mu = {t: CONTRASTS[m][t] * jitter[m][t] for t in CONTRASTS[m]}
        img = healthy * (anat.wm * mu["WM"] + anat.gm * mu["GM"] + anat.csf * mu["CSF"])
        for v, key in tumour_keys.items():
            img = img + fracs[v] * mu[key] * anat.brain
        out[i] = img * texture
    return out, {"contrast_jitter": jitter}


def corrupt(images: np.ndarray, seg: np.ndarray, brain: np.ndarray, cfg: PhantomConfig, seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One elastic deformation for all channels and the mask, then a bias field and Rician noise (MONAI)."""
    from monai.transforms import Rand3DElasticd, RandBiasField, RandRicianNoise

    rng = np.random.default_rng(seed)
    stack = {"img": np.concatenate([images, brain[None]], 0), "seg": seg[None].astype(np.float32)}
    elastic = Rand3DElasticd(
        keys=["img", "seg"], sigma_range=(6.0, 8.0), magnitude_range=(40.0, 80.0), prob=1.0,
        mode=("bilinear", "nearest"), padding_mode="zeros",
    )
    elastic.set_random_state(seed=int(rng.integers(2**31)))
    warped = elastic(stack)
    img = np.asarray(warped["img"], dtype=np.float32)
    seg_w = np.rint(np.asarray(warped["seg"])[0]).astype(np.uint8)
    brain_w = img[-1] > 0.5
    img = img[:-1]
    noise_std = float(rng.uniform(*cfg.noise_range))
    for c in range(img.shape[0]):
        bias = RandBiasField(degree=3, coeff_range=(0.05, 0.15), prob=1.0)
        bias.set_random_state(seed=int(rng.integers(2**31)))
        img[c] = np.asarray(bias(img[c][None]))[0]
    rician = RandRicianNoise(prob=1.0, std=noise_std, relative=True, channel_wise=True, sample_std=False)
    rician.set_random_state(seed=int(rng.integers(2**31)))
    img = np.asarray(rician(img), dtype=np.float32)
    img *= brain_w[None]
    seg_w[~brain_w] = 0
    return img, seg_w, {"noise_std": noise_std}


# --------------------------------------------------------------------------- dataset
def case_id_for(index: int) -> str:
    return f"BraTS-PHA-{index:05d}-000"


def make_case(index: int, cfg: PhantomConfig, cases_dir: Path) -> dict[str, Any]:
    """Build and write one phantom case atomically; return its manifest row."""
    anat = load_anatomy(cfg.spacing)
    case_seed = derive_seed(cfg.seed, index)
    rng = np.random.default_rng(case_seed)
    cid = case_id_for(index)
    seg, t_params = sample_tumour(anat, cfg.label_scheme, cfg, rng)
    images, c_params = render_images(anat, seg, cfg.label_scheme, rng)
    images, seg, n_params = corrupt(images, seg, anat.brain, cfg, int(rng.integers(2**31)))
    volumes = {m: (np.rint(np.clip(images[i] * WM_INTENSITY, 0, 32767)), np.int16) for i, m in enumerate(MODALITIES)}
    volumes["seg"] = (seg, np.uint8)
    with atomic_dir(cases_dir / cid) as tmp:
        row: dict[str, Any] = {"case_id": cid, **write_case_volumes(tmp, cid, volumes, anat.affine, f"cases/{cid}/")}
    row.update(
        status=STATUS_OK, reason="", split=assign_split(cid, cfg.test_fraction, cfg.split_salt), has_seg=True,
        shape=[int(s) for s in seg.shape], spacing=[cfg.spacing] * 3,
        orientation="".join(nib.aff2axcodes(anat.affine)),
        labels=[int(v) for v in np.unique(seg)], source_labels=[int(v) for v in np.unique(seg)],
        source_path="", source_case="", seed=case_seed,
        params=_json({"tumour": t_params, **c_params, **n_params}),
    )
    return row


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj, sort_keys=True, default=float)


@dataclass
class PhantomSummary:
    name: str
    n_cases: int
    seconds: float
    path: Path

    def line(self) -> str:
        return f"{self.name}: {self.n_cases} phantom cases in {self.seconds:.1f} s -> {self.path}"


def make_phantom(workspace: str | Path, name: str, config: PhantomConfig | None = None, progress: bool | None = None) -> PhantomSummary:
    """Write a phantom dataset of kind ``phantom`` under the dataset contract."""
    cfg = config or PhantomConfig()
    t0 = time.perf_counter()
    load_anatomy(cfg.spacing)  # once, before the workers share it
    root = dataset_dir(workspace, name)
    cases_dir = root / "cases"
    with ThreadPoolExecutor(max_workers=cfg.workers) as pool:
        rows = list(tqdm(pool.map(lambda i: make_case(i, cfg, cases_dir), range(cfg.cases)), total=cfg.cases,
                         desc=f"phantom {name}", unit="case", disable=(not progress) if progress is not None else None))
    manifest = pd.DataFrame(rows)
    manifest["seed"] = manifest["seed"].astype("Int64")
    from data_catalog import remove_stale_cases

    remove_stale_cases(root, set(manifest["case_id"]))
    register_dataset(
        workspace, name, kind="phantom", label_scheme=cfg.label_scheme, manifest=manifest, config=cfg.model_dump(),
        extra={
            "test_fraction": cfg.test_fraction, "split_salt": cfg.split_salt,
            "note": "Synthetic phantom from the MNI152 2009a template (nilearn): numbers measured on it are "
                    "pipeline checks, never claims about BraTS.",
            "template_license": "MNI ICBM152 2009a: copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging "
                                "Centre, Montreal Neurological Institute, McGill University; permissive notice.",
        },
    )
    return PhantomSummary(name=name, n_cases=cfg.cases, seconds=time.perf_counter() - t0, path=root)
