"""A NIfTI header that claims more data than its file holds is refused from the header, so bad input
never costs more memory than the file it came in."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from tests import builders as b

ROOT = Path(__file__).resolve().parents[1]
CLAIMED = (1000, 1000, 1000)  # float32: 4 GB claimed by a file of a few hundred bytes


def _lying_nifti(path: Path) -> None:
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.float32)
    hdr.set_data_shape(CLAIMED)
    hdr.set_qform(np.eye(4), code=1)
    hdr["vox_offset"] = 352
    raw = hdr.binaryblock + b"\0" * (352 - len(hdr.binaryblock)) + np.zeros(16, np.float32).tobytes()
    path.write_bytes(gzip.compress(raw))


def _peak_ingest_mib(src: Path, ws: Path) -> float:
    """Peak resident memory of a fresh process that ingests ``src`` (its own, not this test's)."""
    code = (
        "import resource, sys\n"
        "from components.brats import IngestConfig, ingest\n"
        "ingest(sys.argv[1], sys.argv[2], 'rel', IngestConfig(workers=1), progress=False)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"  # KiB on Linux
    )
    out = subprocess.run([sys.executable, "-c", code, str(src), str(ws)], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def test_an_oversized_header_is_quarantined_within_the_memory_of_its_file(tmp_path):
    good = tmp_path / "good"
    b.write_folder_case(good, "brats2023", 0)
    baseline = _peak_ingest_mib(good, tmp_path / "ws-good")  # the interpreter and its libraries
    src = tmp_path / "release"
    b.write_folder_case(src, "brats2023", 0)
    bad = b.write_folder_case(src, "brats2023", 1)
    _lying_nifti(next(bad.glob("*-t2f.nii.gz")))
    peak = _peak_ingest_mib(src, tmp_path / "ws")
    claimed_mib = 4 * np.prod(CLAIMED) / 2**20
    assert peak - baseline < 64, f"the bad case cost {peak - baseline:.0f} MiB; its header claims {claimed_mib:.0f} MiB"
    m = pd.read_parquet(tmp_path / "ws" / "datasets" / "rel" / "manifest.parquet").set_index("case_id")
    bad_row = m.loc[bad.name]
    assert bad_row["status"] == "quarantined"
    assert "header claims shape (1000, 1000, 1000) float32" in bad_row["reason"] and "t2f" in bad_row["reason"]
    assert m.loc[b.case_id("brats2023", 0), "status"] == "ok"  # one bad case never stops the dataset
    assert json.loads((tmp_path / "ws" / "datasets" / "rel" / "dataset.json").read_text())["n_quarantined"] == 1


def test_a_valid_multi_member_gzip_is_not_mistaken_for_an_oversized_header(tmp_path):
    """gzip's size trailer covers only the last member of a file written in several (pigz -i, bgzip)."""
    from components.io import nifti_claimed_and_held_bytes

    img = nib.Nifti1Image(np.arange(20 * 20 * 16, dtype=np.float32).reshape(20, 20, 16), np.eye(4))
    raw = img.to_bytes()
    f = tmp_path / "multi.nii.gz"
    f.write_bytes(b"".join(gzip.compress(raw[i:i + 4096]) for i in range(0, len(raw), 4096)))
    assert int.from_bytes(f.read_bytes()[-4:], "little") < len(raw)  # the trailer alone would refuse it
    claimed, held, _ = nifti_claimed_and_held_bytes(f)
    assert held >= claimed
