"""Ingestion throughput vs a bare nibabel load of the same files, measured in one run.

    .venv/bin/python bench/ingest.py [--cases 8] [--shape 240 240 155]

Writes a BraTS 2023-layout tree of random cases to a temp folder, then times
(1) a bare `np.asanyarray(nibabel.load(f).dataobj)` over every file, sequentially, and
(2) `components.brats.ingest` (read, validate, digest, link/copy, manifest) with 1 and N workers.
Last line: a JSON object with the figures and the overhead ratio (ours / bare; target <= 1.5).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.brats import IngestConfig, ingest  # noqa: E402


def make_tree(root: Path, cases: int, shape: tuple[int, int, int], seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    aff = np.diag([-1.0, -1.0, 1.0, 1.0])
    files = []
    for i in range(cases):
        cid = f"BraTS-GLI-{i:05d}-000"
        d = root / cid
        d.mkdir(parents=True)
        base = rng.normal(500, 120, size=shape).astype(np.float32)
        brain = np.zeros(shape, bool)
        sl = tuple(slice(s // 6, s - s // 6) for s in shape)
        brain[sl] = True
        for k, mod in enumerate(("t1n", "t1c", "t2w", "t2f")):
            arr = np.where(brain, base * (1 + 0.1 * k), 0).astype(np.int16)
            f = d / f"{cid}-{mod}.nii.gz"
            nib.save(nib.Nifti1Image(arr, aff), str(f))
            files.append(f)
        seg = np.zeros(shape, np.uint8)
        c = tuple(s // 2 for s in shape)
        seg[c[0] - 20 : c[0] + 20, c[1] - 20 : c[1] + 20, c[2] - 15 : c[2] + 15] = 2
        seg[c[0] - 8 : c[0] + 8, c[1] - 8 : c[1] + 8, c[2] - 6 : c[2] + 6] = 3
        f = d / f"{cid}-seg.nii.gz"
        nib.save(nib.Nifti1Image(seg, aff), str(f))
        files.append(f)
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--shape", type=int, nargs=3, default=(240, 240, 155))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        files = make_tree(tmp / "src", a.cases, tuple(a.shape), a.seed)
        mb = sum(f.stat().st_size for f in files) / 1e6
        # Warm the page cache so both paths read from memory.
        for f in files:
            f.read_bytes()
        t0 = time.perf_counter()
        for f in files:
            np.asanyarray(nib.load(str(f)).dataobj)
        bare = time.perf_counter() - t0
        ours = {}
        for w in sorted({1, a.workers}):
            ws = tmp / f"ws{w}"
            t0 = time.perf_counter()
            s = ingest(tmp / "src", ws, "bench", IngestConfig(workers=w), progress=False)
            ours[w] = time.perf_counter() - t0
            if s.n_ok != a.cases:
                raise SystemExit(f"bench: expected {a.cases} ok cases, got {s.line()}")
        t0 = time.perf_counter()
        ingest(tmp / "src", tmp / f"ws{a.workers}", "bench", IngestConfig(workers=a.workers), progress=False)
        rerun = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{a.cases} cases of {tuple(a.shape)}, {len(files)} files, {mb:.0f} MB compressed")
    print(f"bare nibabel load (sequential): {bare:.2f} s")
    for w, t in ours.items():
        print(f"gliosynth ingest, {w} worker(s): {t:.2f} s  (ratio {t / bare:.2f}x)")
    print(f"gliosynth re-ingest of the unchanged source: {rerun:.2f} s")
    print(json.dumps({
        "cases": a.cases, "shape": list(a.shape), "files": len(files), "mb_compressed": round(mb, 1),
        "bare_nibabel_s": round(bare, 3),
        "ingest_1_worker_s": round(ours[1], 3), f"ingest_{a.workers}_workers_s": round(ours[a.workers], 3),
        "ratio_1_worker": round(ours[1] / bare, 3), f"ratio_{a.workers}_workers": round(ours[a.workers] / bare, 3),
        "reingest_unchanged_s": round(rerun, 3),
    }))


if __name__ == "__main__":
    main()
