"""nnU-Net's dataset fingerprint as nnU-Net runs it vs as the ablation runs it, measured in one run.

    .venv/bin/python bench/fingerprint.py [--cases 10] [--spacing 4.0] [--processes 2]

Data: the demo's phantom (10 cases at 4 mm; its train split becomes an nnU-Net raw dataset), made in
a temp folder. Each variant runs in a fresh process: nnU-Net's ``DatasetFingerprintExtractor``
(10^8 foreground intensities drawn per channel, whatever the dataset's size) and the ablation's
(``components.segmentation.nnunet.fingerprint_extractor``: 10^6 when no channel is CT-normalised).
Printed per variant: seconds, the peak resident memory of the main process and of the largest
worker, and whether the plans' inputs that matter for MRI (shapes, spacings) agree.
Last line: a JSON object with the figures and the speed-up.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GB = 1e6  # ru_maxrss is in KiB on Linux: KiB / 1e6 ~ GB


def child(root: Path, dataset_id: int, variant: str, processes: int) -> dict:
    from components.segmentation.nnunet import fingerprint_extractor, nnunet_paths

    with nnunet_paths(root / variant):
        from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
        from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprint_dataset

        cls = DatasetFingerprintExtractor if variant == "nnunet" else fingerprint_extractor()
        t0 = time.perf_counter()
        fp = extract_fingerprint_dataset(dataset_id, cls, num_processes=processes, check_dataset_integrity=False,
                                         clean=True, verbose=False, show_progress_bar=False)
        sec = time.perf_counter() - t0
    return {"variant": variant, "seconds": round(sec, 1),
            "peak_main_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / GB, 2),
            "peak_worker_gb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / GB, 2),
            "shapes_after_crop": [list(map(int, s)) for s in fp["shapes_after_crop"]],
            "spacings": [list(map(float, s)) for s in fp["spacings"]]}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=10)
    p.add_argument("--spacing", type=float, default=4.0)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--child", nargs=3, metavar=("ROOT", "ID", "VARIANT"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(Path(a.child[0]), int(a.child[1]), a.child[2], a.processes)))
        return {}

    from components.export import export_dataset_nnunet
    from components.phantom import PhantomConfig, make_phantom
    from data_catalog import open_dataset

    with tempfile.TemporaryDirectory() as tmp:
        ws, root = Path(tmp) / "ws", Path(tmp) / "nnunet"
        make_phantom(ws, "phantom", PhantomConfig(cases=a.cases, spacing=a.spacing, seed=0, test_fraction=0.3),
                     progress=False)
        rows = []
        for variant in ("nnunet", "ours"):
            export_dataset_nnunet(open_dataset(ws, "phantom"), root / variant / "raw", dataset_id=501)
            cmd = [sys.executable, str(Path(__file__).resolve()), "--processes", str(a.processes),
                   "--child", str(root), "501", variant]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if out.returncode:
                raise SystemExit(f"{variant} failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{variant:>6s}: {row['seconds']:6.1f} s, peak RSS main {row['peak_main_gb']:.2f} GB, "
                  f"largest worker {row['peak_worker_gb']:.2f} GB", flush=True)
    ref, ours = rows
    same = ref["shapes_after_crop"] == ours["shapes_after_crop"] and ref["spacings"] == ours["spacings"]
    result = {"bench": "fingerprint", "cases_train": len(ref["spacings"]), "processes": a.processes,
              "nnunet": {k: ref[k] for k in ("seconds", "peak_main_gb", "peak_worker_gb")},
              "ours": {k: ours[k] for k in ("seconds", "peak_main_gb", "peak_worker_gb")},
              "speedup": round(ref["seconds"] / max(ours["seconds"], 0.1), 1), "same_shapes_and_spacings": same}
    print(f"speed-up {result['speedup']}x; shapes and spacings identical: {same}", flush=True)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
