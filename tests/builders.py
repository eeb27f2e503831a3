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


def write_real_and_synthetic(ws: Path, n_real: int = 6, per_case: int = 2, shape=(32, 32, 24), test_fraction=0.34,
                             generator_cases: list[str] | None = None, syn_name: str = "syn"):
    """A small 'real' dataset (ingested, with a fixed split) and a 'synthetic' one derived from every real case.

    Synthetic cases inherit their source's split, as the synthesizer's do; the ablation must keep
    the ones derived from test cases out of training. The synthetic set records its generator's
    training cases as the synthesizer does: ``generator_cases``, by default the real train split.
    """
    import pandas as pd

    from components.brats import IngestConfig, ingest
    from components.io import save_nifti, sha256_file
    from data_catalog import MODALITIES, open_dataset, register_dataset

    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    src = ws.parent / f"{ws.name}-src"
    for i in range(n_real):
        cid = f"BraTS-GLI-{i:05d}-000"
        d = src / cid
        seg = seg_array((1, 2, 3), shape=shape, seed=i)
        rng = np.random.default_rng(i)
        base = np.where(np.ones(shape, bool), 100.0, 0.0)
        for k, m in enumerate(MODALITIES):
            img = base * (1 + 0.2 * k) + 40.0 * (seg > 0) * (k + 1) + 5 * rng.standard_normal(shape)
            save(d / f"{cid}-{m}.nii.gz", img.astype(np.float32), aff)
        save(d / f"{cid}-seg.nii.gz", seg, aff, dtype=np.uint8)
    if not (ws / "datasets" / "real" / "dataset.json").is_file():
        ingest(src, ws, "real", IngestConfig(test_fraction=test_fraction, workers=1), progress=False)
    real = open_dataset(ws, "real")
    rows = []
    root = ws / "datasets" / syn_name
    for _, r in real.ok_cases().iterrows():
        for k in range(per_case):
            cid = f"syn-{r['case_id']}-{k}"
            row = {"case_id": cid, "status": "ok", "reason": "", "split": r["split"], "source_case": r["case_id"],
                   "mask_case": r["case_id"], "seed": k, "params": "{}", "quality_score": float(k),
                   "shape": list(r["shape"]), "spacing": list(r["spacing"]), "labels": list(r["labels"])}
            rng = np.random.default_rng(k)
            for key in (*MODALITIES, "seg"):
                img = nib.load(str(real.root / r[key]))
                arr = np.asanyarray(img.dataobj)
                if key != "seg":
                    arr = arr + rng.normal(0, 3, arr.shape).astype(np.float32)
                f = root / "cases" / cid / f"{cid}-{key}.nii.gz"
                save_nifti(f, arr, img.affine, dtype=np.uint8 if key == "seg" else np.float32)
                row[key] = f"cases/{cid}/{cid}-{key}.nii.gz"
                row[f"sha256_{key}"] = sha256_file(f)
            rows.append(row)
    m = pd.DataFrame(rows)
    m["seed"] = m["seed"].astype("Int64")
    gen = list(real.ok_cases("train")["case_id"]) if generator_cases is None else list(generator_cases)
    register_dataset(ws, syn_name, kind="synthetic", label_scheme="brats2023", manifest=m,
                     extra={"generator_dataset": "real", "generator_train_cases": gen})
    return real, open_dataset(ws, syn_name)


# --------------------------------------------------------------------------- catalogued datasets (synthesis tests)
TISSUE_SHAPE = (20, 18, 14)
TISSUE_SPACING = (1.5, 1.5, 2.0)
# Relative intensities per modality: healthy, then the three tumour labels in order (NCR, ED, ET).
TISSUE_CONTRASTS = {"t1n": (1.0, 0.4, 0.75, 0.8), "t1c": (1.0, 0.4, 0.75, 1.45),
                    "t2w": (1.0, 3.0, 2.2, 1.6), "t2f": (1.0, 0.9, 1.8, 1.5)}


def tissue_case(seed: int, shape=TISSUE_SHAPE, labels=(1, 2, 3)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A tiny head: an ellipsoid (radii 7, 6, 5 voxels) with a nested tumour (labels[1] outside, then
    labels[2], then labels[0]) and tissue contrasts per modality. Returns (images (4, ...), seg, head)."""
    rng = np.random.default_rng(seed)
    c = np.array(shape) / 2.0 - 0.5
    x, y, z = np.ogrid[: shape[0], : shape[1], : shape[2]]
    head = ((x - c[0]) / 7.0) ** 2 + ((y - c[1]) / 6.0) ** 2 + ((z - c[2]) / 5.0) ** 2 <= 1.0
    t = c + rng.integers(-2, 3, size=3)
    r2 = (x - t[0]) ** 2 + (y - t[1]) ** 2 + (z - t[2]) ** 2
    seg = np.zeros(shape, np.uint8)
    seg[(r2 <= 9) & head] = labels[1]
    seg[(r2 <= 4) & head] = labels[2]
    seg[(r2 <= 1) & head] = labels[0]
    images = np.zeros((4, *shape), np.float32)
    for i, contrasts in enumerate(TISSUE_CONTRASTS.values()):
        vol = np.where(head, contrasts[0], 0.0)
        for value, rel in zip((labels[0], labels[1], labels[2]), contrasts[1:], strict=True):
            vol = np.where(seg == value, rel, vol)
        images[i] = (vol * (1.0 + 0.03 * rng.standard_normal(shape)) * 500.0 * head).astype(np.float32)
    return images, seg, head


def write_catalog_dataset(workspace: Path, name: str, n_cases: int = 4, kind: str = "phantom",
                          spacing=TISSUE_SPACING, shape=TISSUE_SHAPE, test_every: int = 4) -> Path:
    """Register a tiny dataset of ``kind`` (phantom/real: 4 modalities + seg; masks: seg + head files)."""
    import pandas as pd

    from components.io import save_nifti, sha256_file
    from data_catalog import MODALITIES, register_dataset

    aff = affine(spacing)
    root = Path(workspace) / "datasets" / name
    rows = []
    for i in range(n_cases):
        cid = f"BraTS-TST-{i:05d}-000" if kind != "masks" else f"BraTS-TST-{i:05d}-000-m0"
        images, seg, head = tissue_case(i, shape)
        d = root / "cases" / cid
        d.mkdir(parents=True, exist_ok=True)
        row = {"case_id": cid, "status": "ok", "reason": "", "split": "test" if i % test_every == test_every - 1 else "train",
               "shape": list(shape), "spacing": list(spacing), "labels": [int(v) for v in np.unique(seg)], "seed": i,
               "params": "{}", "source_case": f"BraTS-TST-{i:05d}-000" if kind == "masks" else ""}
        files = {"seg": (seg, np.uint8)}
        if kind == "masks":
            files["head"] = (head.astype(np.uint8), np.uint8)
        else:
            files.update({m: (np.rint(images[c]), np.int16) for c, m in enumerate(MODALITIES)})
        for key, (arr, dt) in files.items():
            f = d / f"{cid}-{key}.nii.gz"
            save_nifti(f, arr, aff, dtype=dt)
            row[key] = f"cases/{cid}/{f.name}"
            row[f"sha256_{key}"] = sha256_file(f)
        rows.append(row)
    register_dataset(workspace, name, kind=kind, label_scheme="brats2023", manifest=pd.DataFrame(rows))
    return root


# --------------------------------------------------------------------------- mask augmentation tests
MASK_SHAPE = (40, 40, 32)
MASK_SPACING = (2.0, 2.0, 2.0)


def mask_case(seed: int, shape=MASK_SHAPE, labels=(1, 2, 3)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A head (ellipsoid, radii 0.4 x shape) with a nested tumour: labels[1] (oedema, r 6) around
    labels[2] (enhancing, r 3.5) around labels[0] (necrosis, r 2), in voxels; four modalities in which
    a ventricle-like blob is bright only in the third channel. Returns (images (4, ...), seg, head)."""
    rng = np.random.default_rng(seed)
    sh = np.array(shape)
    c = sh / 2.0 - 0.5
    x, y, z = np.ogrid[: shape[0], : shape[1], : shape[2]]
    rad = 0.4 * sh
    head = ((x - c[0]) / rad[0]) ** 2 + ((y - c[1]) / rad[1]) ** 2 + ((z - c[2]) / rad[2]) ** 2 <= 1.0
    t = c + rng.integers(-3, 4, size=3)
    r2 = (x - t[0]) ** 2 + (y - t[1]) ** 2 + (z - t[2]) ** 2
    seg = np.zeros(shape, np.uint8)
    seg[(r2 <= 36) & head] = labels[1]
    seg[r2 <= 12] = labels[2]
    seg[r2 <= 4] = labels[0]
    vent = ((x - c[0] + 7) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 <= 9) & (seg == 0)
    images = np.zeros((4, *shape), np.float32)
    for i in range(4):
        vol = np.where(head, 500.0 * (1 + 0.1 * i), 0.0) * (1 + 0.03 * rng.standard_normal(shape))
        vol[vent] = 1500.0 if i == 2 else 0.0
        vol[seg > 0] *= 1.3
        images[i] = vol
    return images, seg, head


def write_mask_source(workspace: Path, name: str, splits=("train", "train", "test", "test"), shape=MASK_SHAPE,
                      spacing=MASK_SPACING) -> Path:
    """Register a kind 'phantom' dataset of ``len(splits)`` mask_case cases with the given splits."""
    import pandas as pd

    from components.io import save_nifti, sha256_file
    from data_catalog import MODALITIES, register_dataset

    aff = np.diag([*spacing, 1.0])
    root = Path(workspace) / "datasets" / name
    rows = []
    for i, split in enumerate(splits):
        cid = f"BraTS-MSK-{i:05d}-000"
        images, seg, _ = mask_case(i, shape)
        row = {"case_id": cid, "status": "ok", "reason": "", "split": split, "shape": list(shape),
               "spacing": list(spacing), "labels": [int(v) for v in np.unique(seg)]}
        for key, arr, dt in [("seg", seg, np.uint8), *[(m, images[k], np.int16) for k, m in enumerate(MODALITIES)]]:
            f = root / "cases" / cid / f"{cid}-{key}.nii.gz"
            save_nifti(f, np.rint(arr), aff, dtype=dt)
            row[key] = f"cases/{cid}/{f.name}"
            row[f"sha256_{key}"] = sha256_file(f)
        rows.append(row)
    register_dataset(workspace, name, kind="phantom", label_scheme="brats2023", manifest=pd.DataFrame(rows))
    return root


def tiny_synth_config(**train_overrides):
    """The ``tiny`` synthesizer profile with train settings replaced (e.g. steps, montage_cases)."""
    from components.synthesis.config import load_profile

    cfg = load_profile("tiny")
    return cfg.model_copy(update={"train": cfg.train.model_copy(update=train_overrides)})


class torch_threads:
    """Run a block with ``n`` torch threads (tiny volumes run faster on one thread of a shared CPU)."""

    def __init__(self, n: int = 1):
        self.n = n

    def __enter__(self):
        import torch

        self.old = torch.get_num_threads()
        torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.old)
        return False


# --------------------------------------------------------------------------- catalogued datasets (metrics)
def brain_case(shape=(32, 32, 32), seed=0, labels=(1, 2, 3)) -> tuple[np.ndarray, np.ndarray]:
    """A brain-like case: (4, X, Y, Z) float32 images (ellipsoid brain, smooth texture, a tumour) and its seg."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    brain = ((grid / np.array([0.85, 0.8, 0.75])[:, None, None, None]) ** 2).sum(0) <= 1
    texture = ndi.gaussian_filter(rng.standard_normal(shape), 2.0)
    texture /= texture.std() + 1e-8
    c = rng.uniform(-0.25, 0.25, size=3)
    r2 = ((grid - c[:, None, None, None]) ** 2).sum(0)
    seg = np.zeros(shape, np.uint8)
    seg[(r2 <= 0.16) & brain] = labels[1]
    seg[(r2 <= 0.06) & brain] = labels[2]
    seg[(r2 <= 0.02) & brain] = labels[0]
    base = {"t1n": (1.0, 0.4, 0.8), "t1c": (1.0, 0.4, 1.5), "t2w": (1.0, 3.0, 2.2), "t2f": (1.0, 0.9, 1.8)}
    imgs = []
    for key in ("t1n", "t1c", "t2w", "t2f"):
        wm, ncr, tum = base[key]
        img = wm * (1.0 + 0.15 * texture)
        img[seg == labels[1]] = tum * 0.9
        img[seg == labels[2]] = tum
        img[seg == labels[0]] = ncr
        imgs.append(np.where(brain, img * 1000.0, 0.0).astype(np.float32))
    return np.stack(imgs), seg


def write_metrics_dataset(
    ws: Path, name: str, cases: dict[str, tuple[np.ndarray, np.ndarray]], *, kind: str = "phantom",
    label_scheme: str = "brats2023", spacing=(1.0, 1.0, 1.0), extra_columns: dict[str, dict[str, object]] | None = None,
):
    """Write ``cases`` (case_id -> (images (4, X, Y, Z), seg)) as a catalogued dataset and register it."""
    import pandas as pd

    from data_catalog import register_dataset

    root = ws / "datasets" / name
    rows = []
    for cid, (imgs, seg) in cases.items():
        row = {"case_id": cid, "status": "ok", "reason": "", "split": "train", "has_seg": True,
               "shape": list(seg.shape), "spacing": list(spacing), "labels": sorted(int(v) for v in np.unique(seg))}
        for k, key in enumerate(("t1n", "t1c", "t2w", "t2f")):
            rel = f"cases/{cid}/{cid}-{key}.nii.gz"
            save(root / rel, imgs[k], aff=affine(spacing))
            row[key] = rel
        rel = f"cases/{cid}/{cid}-seg.nii.gz"
        save(root / rel, seg, aff=affine(spacing), dtype=np.uint8)
        row["seg"] = rel
        for col, values in (extra_columns or {}).items():
            row[col] = values.get(cid, "")
        rows.append(row)
    return register_dataset(ws, name, kind=kind, label_scheme=label_scheme, manifest=pd.DataFrame(rows))


def noisy_copy(cases: dict[str, tuple[np.ndarray, np.ndarray]], sigma: float, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The same cases with Gaussian noise of ``sigma`` x the mean brain intensity inside the brain."""
    rng = np.random.default_rng(seed)
    out = {}
    for cid, (imgs, seg) in cases.items():
        brain = imgs.max(0) > 0
        scale = float(imgs[:, brain].mean())
        noisy = imgs + (sigma * scale * rng.standard_normal(imgs.shape)).astype(np.float32) * brain
        out[cid] = (np.clip(noisy, 0, None).astype(np.float32), seg)
    return out
