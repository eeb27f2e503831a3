"""Pictures of a masks dataset: feature distributions (real vs augmented) and a montage over the head."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from components.io import atomic_path
from components.viz import render_montage
from data_catalog import STATUS_OK, Dataset

log = logging.getLogger(__name__)


def _panels(regions: list[str]) -> list[tuple[str, str]]:
    r0 = regions[0].lower()
    panels = [(f"volume_mm3_{r0}", f"{regions[0]} volume (mm³, log10)"), (f"surface_mm2_{r0}", f"{regions[0]} surface (mm², log10)"),
              (f"sphericity_{r0}", f"{regions[0]} sphericity")]
    panels += [(f"centroid_{a}_mm_{r0}", f"{regions[0]} centroid {a} (mm)") for a in "xyz"]
    panels += [(f"bbox_{a}_mm_{r0}", f"{regions[0]} bbox {a} (mm)") for a in "xyz"]
    for r in regions[1:3]:
        panels += [(f"volume_mm3_{r.lower()}", f"{r} volume (mm³, log10)"), (f"sphericity_{r.lower()}", f"{r} sphericity")]
    return panels


def plot_mask_features(real: pd.DataFrame, augmented: pd.DataFrame, regions: list[str], out: Path, title: str = "") -> Path:
    """Histograms of real vs augmented tumour features (density), one panel per feature."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(c, lab) for c, lab in _panels(regions) if c in real or c in augmented]
    ncols = 4
    nrows = int(np.ceil(len(panels) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.5 * nrows), squeeze=False)
    for ax, (col, label) in zip(axes.ravel(), panels, strict=False):
        r = pd.to_numeric(real.get(col, pd.Series(dtype=float)), errors="coerce").dropna().to_numpy()
        a = pd.to_numeric(augmented.get(col, pd.Series(dtype=float)), errors="coerce").dropna().to_numpy()
        if "log10" in label:
            r, a = np.log10(r[r > 0]), np.log10(a[a > 0])
        both = np.concatenate([r, a])
        if both.size == 0:
            ax.set_title(f"{label}\n(no data)", fontsize=8)
            continue
        lo, hi = float(both.min()), float(both.max())
        bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 21)
        if a.size:
            ax.hist(a, bins=bins, density=True, alpha=0.55, color="tab:orange", histtype="stepfilled",
                    label=f"augmented (n={a.size})")
        if r.size:
            ax.hist(r, bins=bins, density=True, alpha=0.55, color="tab:blue", histtype="stepfilled",
                    label=f"real (n={r.size})")
            for v in (r.min(), r.max()):
                ax.axvline(v, color="tab:blue", lw=0.8, ls="--")
        ax.set_title(label, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7)
    fig.suptitle((title or "tumour features") + " (dashed: real min/max)", fontsize=10)
    # fixed margins: tight_layout measures every tick label and costs more than the drawing
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.05, top=0.92, wspace=0.3, hspace=0.45)
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return out


def mask_montage(ds: Dataset, out: Path | None = None, n_cases: int = 4) -> Path | None:
    """Montage of ``n_cases`` augmented masks (spread over sources) over their head label."""
    ok = ds.manifest[ds.manifest["status"] == STATUS_OK].sort_values("case_id").reset_index(drop=True)
    if ok.empty:
        return None
    pick = ok.iloc[np.unique(np.linspace(0, len(ok) - 1, min(n_cases, len(ok))).round().astype(int))]
    cases = []
    for _, r in pick.iterrows():
        seg_img = nib.load(str(ds.root / r["seg"]))
        head = np.asanyarray(nib.load(str(ds.root / r["head"])).dataobj) > 0
        # Shade the binary head by depth (a constant image would get a degenerate display window).
        head = np.where(head, 1.0 + np.minimum(ndi.distance_transform_edt(head), 10.0), 0.0).astype(np.float32)
        cases.append({"case_id": r["case_id"], "images": {"head": head},
                      "seg": np.asanyarray(seg_img.dataobj).astype(np.int16), "affine": seg_img.affine})
    return render_montage(cases, out or ds.root / "montage.png", f"{ds.name} [masks]: augmented tumour labels over the head label")


def mask_figures(ds: Dataset, real: pd.DataFrame, n_cases: int = 4) -> dict[str, str | None]:
    """features.png and montage.png in the dataset folder."""
    regions = list(ds.label_scheme.regions)
    aug = ds.manifest[ds.manifest["status"] == STATUS_OK]
    feats = plot_mask_features(real, aug, regions, ds.root / "features.png",
                               f"{ds.name}: tumour features, {len(real)} real vs {len(aug)} augmented masks")
    montage = mask_montage(ds, n_cases=n_cases)
    return {"features": str(feats), "montage": str(montage) if montage else None}
