"""Mask augmentation throughput vs TorchIO's RandomAffine + RandomElasticDeformation, in one run.

    .venv/bin/python bench/masks.py [--masks 4] [--reps 4] [--spacing 2]

Source masks: phantom tumours (components.phantom) in the MNI152 brain on the BraTS grid at
``--spacing`` mm (2 mm: 120x120x78; 1 mm: 240x240x155), head = brain | tumour. The same masks go
through
(1) ours, same work: sample_mask_params + apply_mask_params with the whole-head affine and the
    elastic deformation always on (flip, tumour scaling and relocation off); seg and head labels;
(2) TorchIO: Compose([RandomAffine, RandomElasticDeformation]) on a Subject holding seg and head
    as LabelMaps (nearest-neighbour), ranges matched to ours (rotation 10 deg, scale 0.92-1.08,
    translation 6 mm, displacement up to 4 mm);
(3) affine only, ours vs TorchIO's RandomAffine: the like-for-like part;
(4) ours, full stage: the default config (all five transforms at their probabilities) plus the
    plausibility checks, counted per candidate.
Not identical work: our elastic field covers the tumour's box only (the head is moved rigidly),
TorchIO's covers the whole volume. Last line: a JSON object with masks/s and the ratio
ours_same_work / torchio (target >= 1). If TorchIO is missing, MONAI's RandAffined +
Rand3DElasticd dictionary pipeline is the reference instead (named in the JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.masks import (  # noqa: E402
    MaskAugmentConfig,
    MaskCase,
    apply_mask_params,
    check_mask,
    mask_reference,
    sample_mask_params,
)
from components.phantom import PhantomConfig, load_anatomy, sample_tumour  # noqa: E402
from data_catalog import load_label_scheme  # noqa: E402

SAME_WORK = MaskAugmentConfig(
    flip={"p": 0.0}, affine={"p": 1.0, "rotation_deg": 10.0, "scale": (0.92, 1.08), "translation_mm": 6.0},
    elastic={"p": 1.0, "magnitude_mm": (1.0, 4.0)}, tumour_scale={"p": 0.0}, relocate={"p": 0.0},
)
AFFINE_ONLY = SAME_WORK.model_copy(update={"elastic": MaskAugmentConfig().elastic.model_copy(update={"p": 0.0})})


def make_masks(n: int, spacing: float, seed: int) -> tuple[list[MaskCase], np.ndarray]:
    anat = load_anatomy(spacing)
    cfg = PhantomConfig(spacing=spacing, seed=seed)
    cases = []
    for i in range(n):
        seg, _ = sample_tumour(anat, "brats2023", cfg, np.random.default_rng([seed, i]))
        head = (anat.brain > 0.5) | (seg > 0)
        cases.append(MaskCase(f"case{i}", "train", seg, head, (spacing,) * 3, 0))
    return cases, anat.affine


def bench_ours(cases: list[MaskCase], reps: int, cfg: MaskAugmentConfig, check: bool) -> tuple[float, int]:
    regions = load_label_scheme("brats2023").regions
    refs = {c.case_id: mask_reference(c.seg, c.head, regions, c.spacing, cfg.checks) for c in cases} if check else {}
    lookup = {c.case_id: c for c in cases}
    for c in cases:  # warm the per-case caches (depth map, tumour outline) and imports outside the timing
        _ = c.depth, c.tumour_points, c.head_centre
    warm = sample_mask_params(np.random.default_rng(0), cases[0], SAME_WORK)
    apply_mask_params(cases[0].seg, cases[0].head, warm)
    n = 0
    t0 = time.perf_counter()
    for r in range(reps):
        for c in cases:
            rng = np.random.default_rng([r, n])
            hosts = [h for h in lookup if h != c.case_id]
            p = sample_mask_params(rng, c, cfg, hosts, lookup.__getitem__)
            host = lookup[p.host_case].head if p.host_case != c.case_id else None
            seg, head = apply_mask_params(c.seg, c.head, p, host)
            if check:
                check_mask(seg, head, refs[c.case_id], cfg.checks)
            n += 1
    return time.perf_counter() - t0, n


def bench_torchio(cases: list[MaskCase], affine: np.ndarray, reps: int, elastic: bool = True) -> tuple[float, int, str]:
    import torch
    import torchio as tio

    torch.manual_seed(0)
    steps = [tio.RandomAffine(scales=(0.92, 1.08), degrees=10, translation=6, isotropic=True)]
    if elastic:
        steps.append(tio.RandomElasticDeformation(num_control_points=7, max_displacement=4.0, locked_borders=2))
    transform = tio.Compose(steps)
    subjects = [tio.Subject(seg=tio.LabelMap(tensor=torch.from_numpy(c.seg[None].astype(np.int16)), affine=affine),
                            head=tio.LabelMap(tensor=torch.from_numpy(c.head[None].astype(np.int16)), affine=affine))
                for c in cases]
    transform(subjects[0])  # warm-up (imports, SimpleITK init)
    n = 0
    t0 = time.perf_counter()
    for _ in range(reps):
        for s in subjects:
            out = transform(s)
            out["seg"].data.numpy()
            out["head"].data.numpy()
            n += 1
    name = "RandomAffine + RandomElasticDeformation" if elastic else "RandomAffine"
    return time.perf_counter() - t0, n, f"torchio {tio.__version__}: {name}"


def bench_monai(cases: list[MaskCase], reps: int) -> tuple[float, int, str]:
    import monai
    from monai.transforms import Compose, Rand3DElasticd, RandAffined

    sp = cases[0].spacing[0]
    keys = ["seg", "head"]
    transform = Compose([
        RandAffined(keys, prob=1.0, rotate_range=(np.deg2rad(10),) * 3, scale_range=(0.08,) * 3,
                    translate_range=(6.0 / sp,) * 3, mode="nearest", padding_mode="zeros"),
        Rand3DElasticd(keys, sigma_range=(5, 7), magnitude_range=(1.0 / sp, 4.0 / sp), prob=1.0, mode="nearest",
                       padding_mode="zeros"),
    ])
    transform.set_random_state(0)
    data = [{"seg": c.seg[None].astype(np.float32), "head": c.head[None].astype(np.float32)} for c in cases]
    transform(data[0])
    n = 0
    t0 = time.perf_counter()
    for _ in range(reps):
        for d in data:
            transform(d)
            n += 1
    return time.perf_counter() - t0, n, f"monai {monai.__version__}: RandAffined + Rand3DElasticd (TorchIO not installed)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--masks", type=int, default=4, help="source masks (default: 4)")
    ap.add_argument("--reps", type=int, default=2, help="augmented masks per source mask and method (default: 2)")
    ap.add_argument("--spacing", type=float, default=2.0, help="grid spacing in mm (default: 2; 1 = BraTS grid)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    cases, affine = make_masks(a.masks, a.spacing, a.seed)
    shape = list(cases[0].seg.shape)
    t_same, n_same = bench_ours(cases, a.reps, SAME_WORK, check=False)
    t_aff, n_aff = bench_ours(cases, a.reps, AFFINE_ONLY, check=False)
    t_full, n_full = bench_ours(cases, a.reps, MaskAugmentConfig(), check=True)
    ref_aff = None
    try:
        t_ref, n_ref, ref = bench_torchio(cases, affine, a.reps)
        t_ra, n_ra, ref_aff = bench_torchio(cases, affine, a.reps, elastic=False)
    except ImportError:
        t_ref, n_ref, ref = bench_monai(cases, a.reps)
    import torch

    res = {
        "shape": shape, "spacing_mm": a.spacing, "masks": a.masks, "reps": a.reps,
        "ours_same_work_masks_per_s": n_same / t_same,
        "ours_affine_only_masks_per_s": n_aff / t_aff,
        "ours_full_stage_with_checks_candidates_per_s": n_full / t_full,
        "reference": ref, "reference_masks_per_s": n_ref / t_ref,
        "ratio_same_work": (n_same / t_same) / (n_ref / t_ref),
        "ratio_full_stage": (n_full / t_full) / (n_ref / t_ref),
        "torch_threads": torch.get_num_threads(),
    }
    if ref_aff:
        res.update(reference_affine_only=ref_aff, reference_affine_only_masks_per_s=n_ra / t_ra,
                   ratio_affine_only=(n_aff / t_aff) / (n_ra / t_ra))
    print(f"shape {shape} at {a.spacing} mm, {a.masks} masks x {a.reps} reps")
    print(f"ours (affine + tumour elastic):          {res['ours_same_work_masks_per_s']:8.2f} masks/s")
    print(f"ours (affine only):                      {res['ours_affine_only_masks_per_s']:8.2f} masks/s")
    print(f"ours (full default stage + checks):      {res['ours_full_stage_with_checks_candidates_per_s']:8.2f} candidates/s")
    print(f"{ref}: {res['reference_masks_per_s']:8.2f} masks/s")
    if ref_aff:
        print(f"{ref_aff}: {res['reference_affine_only_masks_per_s']:8.2f} masks/s "
              f"(ratio ours/reference, affine only: {res['ratio_affine_only']:.1f}x)")
    print(f"ratio ours/reference (same work): {res['ratio_same_work']:.1f}x")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
