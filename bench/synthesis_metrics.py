"""evaluate-synthesis on 8 phantom cases against 8 others: the metrics issue's budget (< 2 minutes
on 2 CPU cores), measured through the real command, in one run.

    .venv/bin/python bench/synthesis_metrics.py [--cases 8] [--spacing 2] [--threads N]

Two phantom datasets (seeds 1 and 2, ``--spacing`` mm) are made first and not timed; then
``python -m flows evaluate-synthesis --real a --synthetic b`` runs in this process (Prefect's
temporary server start included, as a user sees it). The stage timings the report keeps
(Inception features, random 3-D network, MS-SSIM/PSNR/SSIM) are printed too. There is no
reference path for this stage; the comparison is against the budget. Last line: a JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BUDGET_S = 120.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--spacing", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads while scoring (default: torch's)")
    ap.add_argument("--workspace", default=None, help="keep the datasets and report here (default: a temp folder)")
    a = ap.parse_args()

    from components.phantom import PhantomConfig, make_phantom
    from flows.__main__ import main as cli

    with tempfile.TemporaryDirectory(prefix="bench-synthesis-metrics-") as tmp:
        ws = Path(a.workspace or tmp)
        for name, seed in (("a", 1), ("b", 2)):
            make_phantom(ws, name, PhantomConfig(cases=a.cases, spacing=a.spacing, seed=seed), progress=False)
        # every case of a (no split): the comparison stays 8 against 8, without floors
        argv = ["evaluate-synthesis", "--real", "a", "--synthetic", "b", "--real-split", "all", "--workspace", str(ws)]
        if a.threads:
            argv += ["--threads", str(a.threads)]
        t0 = time.perf_counter()
        rc = cli(argv)
        seconds = time.perf_counter() - t0
        report = json.loads((ws / "metrics" / "synthesis_b_vs_a.json").read_text(encoding="utf-8"))
    timings = report["timings"]
    print(f"evaluate-synthesis {a.cases} vs {a.cases} phantom cases at {a.spacing:g} mm: {seconds:.1f} s "
          f"(budget {BUDGET_S:.0f} s); stage timings {timings}")
    print(json.dumps({"bench": "synthesis_metrics", "cases": a.cases, "spacing_mm": a.spacing, "exit_code": rc,
                      "seconds": round(seconds, 1), "budget_s": BUDGET_S, "within_budget": seconds < BUDGET_S,
                      "stage_timings_s": timings}))
    return rc


if __name__ == "__main__":
    sys.exit(main())
