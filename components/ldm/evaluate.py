"""Does a synthetic set follow its masks? The tumour contrast of each case against the real cases'.

For each case and modality: the mean intensity inside the whole tumour (seg > 0) over the mean in the
head tissue around it (a shell of ``shell_mm`` around the tumour, inside the head), and the Dice of a
FLAIR threshold inside the head against the tumour, the threshold being the midpoint of the real
cases' tumour and surround FLAIR means. A model that ignored its mask would give contrasts near 1 and a
Dice near 0; the real cases give the target.

    .venv/bin/python -m components.ldm.evaluate --workspace WS --real phantom --synthetic ldm-syn
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from components.io import load_nifti
from components.synthesis.data import spacing_of
from data_catalog import MODALITIES, Dataset, has_file, open_dataset

log = logging.getLogger(__name__)

def case_contrast(ds: Dataset, case_id: str, shell_mm: float = 8.0) -> dict[str, float]:
    seg, affine, _ = load_nifti(ds.path(case_id, "seg"))
    wt = np.asarray(seg) > 0
    row = ds.manifest.loc[ds.manifest["case_id"] == case_id].iloc[0]
    images = {m: np.asarray(load_nifti(ds.path(case_id, m))[0], dtype=np.float32) for m in MODALITIES}
    head = (np.asarray(load_nifti(ds.path(case_id, "head"))[0]) > 0 if has_file(row, "head")
            else np.stack(list(images.values())).max(0) > 0) | wt
    radius = max(1, int(round(shell_mm / min(spacing_of(affine)))))
    shell = ndi.binary_dilation(wt, iterations=radius) & head & ~wt
    out: dict[str, float] = {"case_id": case_id, "wt_voxels": int(wt.sum())}
    for m, img in images.items():
        out[f"{m}_tumour"] = float(img[wt].mean()) if wt.any() else np.nan
        out[f"{m}_surround"] = float(img[shell].mean()) if shell.any() else np.nan
        out[f"{m}_contrast"] = out[f"{m}_tumour"] / out[f"{m}_surround"] if out[f"{m}_surround"] else np.nan
    return out


def contrast_table(ds: Dataset, split: str | None = None, shell_mm: float = 8.0) -> pd.DataFrame:
    cases = ds.ok_cases(split) if split else ds.ok_cases()
    return pd.DataFrame([case_contrast(ds, str(c), shell_mm) for c in cases["case_id"]])


def flair_dice(ds: Dataset, table: pd.DataFrame, threshold: float) -> list[float]:
    """Dice of (FLAIR > threshold inside the head) against the whole tumour, per case of ``table``."""
    out = []
    for cid in table["case_id"]:
        row = ds.manifest.loc[ds.manifest["case_id"] == cid].iloc[0]
        wt = np.asarray(load_nifti(ds.path(cid, "seg"))[0]) > 0
        flair = np.asarray(load_nifti(ds.path(cid, "t2f"))[0], dtype=np.float32)
        head = np.asarray(load_nifti(ds.path(cid, "head"))[0]) > 0 if has_file(row, "head") else flair > 0
        pred = (flair > threshold) & (head | wt)
        out.append(float(2 * (pred & wt).sum() / max(1, pred.sum() + wt.sum())))
    return out


def compare(workspace: str | Path, real: str, synthetic: str, real_split: str | None = "train") -> dict[str, object]:
    rds, sds = open_dataset(workspace, real), open_dataset(workspace, synthetic)
    rt, st = contrast_table(rds, real_split), contrast_table(sds)
    threshold = float((rt["t2f_tumour"].mean() + rt["t2f_surround"].mean()) / 2)
    summary: dict[str, object] = {"real": real, "synthetic": synthetic, "n_real": len(rt), "n_synthetic": len(st),
                                  "flair_threshold": threshold}
    for m in MODALITIES:
        summary[f"{m}_contrast_real"] = round(float(rt[f"{m}_contrast"].mean()), 3)
        summary[f"{m}_contrast_synthetic"] = round(float(st[f"{m}_contrast"].mean()), 3)
    summary["flair_dice_real"] = round(float(np.mean(flair_dice(rds, rt, threshold))), 3)
    summary["flair_dice_synthetic"] = round(float(np.mean(flair_dice(sds, st, threshold))), 3)
    return summary


def main(argv: list[str] | None = None) -> dict[str, object]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workspace", required=True)
    p.add_argument("--real", required=True, help="the real dataset (its train split is the reference)")
    p.add_argument("--synthetic", required=True)
    a = p.parse_args(argv)
    out = compare(a.workspace, a.real, a.synthetic)
    log.info("tumour contrast, real against synthetic:\n%s", json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
