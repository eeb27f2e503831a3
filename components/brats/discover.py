"""Finding the cases of a release under a folder, whatever its layout (BraTS 2021, 2023+, MSD Task01)."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from components.brats.common import CaseSource, IngestError
from components.io import (
    NIFTI_RE,
)
from data_catalog import (
    load_layouts,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- discovery
def _visible(name: str) -> bool:
    # macOS archives carry "._X.nii.gz" resource forks next to the real files (MSD Task01 does).
    return not name.startswith(".")


def discover(source: str | os.PathLike, layout: str = "auto") -> tuple[str, list[CaseSource]]:
    """Find every case under ``source`` (searched recursively) and the layout they follow."""
    source = Path(source)
    if not source.exists():
        raise IngestError(f"source {source} does not exist")
    layouts = load_layouts()
    if layout != "auto" and layout not in layouts:
        raise IngestError(f"unknown layout {layout!r}; known: auto, {', '.join(layouts)}")
    folder_layouts = {k: v for k, v in layouts.items() if v["kind"] == "case_folders"}
    patterns = {k: re.compile(v["pattern"]) for k, v in folder_layouts.items()}
    found: dict[str, list[CaseSource]] = {k: [] for k in layouts}
    msd_cfg = layouts["msd_task01"]
    msd_dirs = set(msd_cfg["image_dirs"]) | {msd_cfg["label_dir"]}

    for dirpath, dirnames, filenames in os.walk(source, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if _visible(d))
        here = Path(dirpath)
        names = sorted(n for n in filenames if _visible(n) and NIFTI_RE.search(n))
        if here.name in msd_dirs:
            if here.name in msd_cfg["image_dirs"]:
                label_dir = here.parent / msd_cfg["label_dir"]
                for n in names:
                    lab = label_dir / n
                    found["msd_task01"].append(
                        CaseSource(
                            case_id=NIFTI_RE.sub("", n), layout="msd_task01", folder=here,
                            msd_image=here / n, msd_label=lab if lab.is_file() else None,
                        )
                    )
            continue
        if not names:
            continue
        per_layout: dict[str, dict[str, list[Path]]] = {}
        for n in names:
            for lname, pat in patterns.items():
                m = pat.match(n)
                if m:
                    key = folder_layouts[lname]["keys"][m.group("key")]
                    per_layout.setdefault(lname, {}).setdefault(key, []).append(here / n)
        # A folder belongs to the layout whose modality names it uses (seg alone says nothing).
        scored = {k: sum(1 for key in v if key != "seg") for k, v in per_layout.items()}
        scored = {k: s for k, s in scored.items() if s > 0}
        if not scored:
            if any("seg" in v for v in per_layout.values()):
                lname = next(iter(per_layout))
                found[lname].append(CaseSource(here.name, lname, here, per_layout[lname]))
            continue
        lname = max(scored, key=lambda k: (scored[k], k))
        found[lname].append(CaseSource(here.name, lname, here, per_layout[lname]))

    if layout != "auto":
        cases = found[layout]
        others = {k: len(v) for k, v in found.items() if k != layout and v}
        if others:
            log.warning("ignoring cases in other layouts than %s: %s", layout, others)
        if not cases:
            raise IngestError(f"no case in layout {layout!r} under {source}")
        return layout, cases
    present = {k: len(v) for k, v in found.items() if v}
    if not present:
        raise IngestError(
            f"no recognisable BraTS or MSD case under {source}: expected case folders such as "
            "BraTS-GLI-00000-000/BraTS-GLI-00000-000-t1n.nii.gz (2023+), "
            "BraTS2021_00000/BraTS2021_00000_t1.nii.gz (2021) or imagesTr/BRATS_001.nii.gz (MSD Task01)"
        )
    if len(present) > 1:
        raise IngestError(
            f"{source} mixes release layouts {present}; ingest them separately or pick one with --layout"
        )
    lname = next(iter(present))
    return lname, sorted(found[lname], key=lambda c: (c.case_id, str(c.folder)))
