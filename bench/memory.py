"""Peak memory of one training step of the ``brats-gpu`` network, with and without gradient checkpointing,
on the CPU at reduced grids, and its projection to the profile's full grid.

    .venv/bin/python bench/memory.py [--profile brats-gpu] [--shapes 48,48,32 64,64,48 80,80,64] [--limit-gb 16]
        [--checkpointing off on] [--precision fp32 bf16] [--rows FILE]

One training step is the training loop's own ``optimizer_step`` (forward, loss, backward, gradient
clipping, Adam step; Adam's two moment buffers are allocated in it), batch 1, one micro-batch, in
float32 and under the bfloat16 autocast the profile's ``train.amp`` turns on for a GPU (``--precision``;
here torch's CPU autocast, where group normalisation also runs in bfloat16 while CUDA's autocast runs
it in float32, so the CPU bf16 figure is a lower bound of the GPU's and float32 an upper bound).
Weights, gradients and Adam's moments stay float32 in both. Each (grid, checkpointing, precision) runs
in a fresh subprocess: its
peak resident memory (VmHWM) is reset after the network and optimizer are built, and the growth of
that peak over the step is the step's memory (tracemalloc does not see torch's allocations). A
straight line through (voxels, growth) for each setting projects the full grid (192 x 192 x 144);
the weights (230 MB), there before the step, are added (gradients and Adam's moments are in the
growth). A setting whose projection from the grids already measured exceeds ``--limit-gb`` of RSS
is skipped and listed. ``--rows FILE`` keeps the measured rows, so the settings can be measured in
several shorter runs (a setting already in FILE is not measured again) and projected together.
Every side must be a multiple of 16 for the 5-level network (48 x 48 x 36 and 96 x 96 x 72 are not:
36 / 16 and 72 / 16 leave a remainder, and the skip connections do not line up).
Last line: a JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GB = 1024**3


def _rss(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def child(profile: str, shape: tuple[int, int, int], checkpointing: bool, seed: int, precision: str = "fp32") -> dict:
    """One training step in this process; returns its peak RSS growth (bytes) and seconds."""
    import torch
    from monai.inferers import DiffusionInferer

    from components.synthesis.config import load_profile
    from components.synthesis.data import n_condition_channels
    from components.synthesis.network import build_network, build_scheduler, count_parameters, place_network
    from components.synthesis.objective import optimizer_step
    from data_catalog import load_label_scheme

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    cfg = load_profile(profile)
    cfg = cfg.model_copy(update={
        "network": cfg.network.model_copy(update={"gradient_checkpointing": checkpointing}),
        "train": cfg.train.model_copy(update={"grad_accum": 1, "batch_size": 1}),
    })
    n_cond = n_condition_channels(load_label_scheme("brats2023"))
    device = torch.device("cpu")
    net = place_network(build_network(cfg.network, n_cond, seed=seed, diffusion=cfg.diffusion), device).train()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.train.lr)
    inferer = DiffusionInferer(build_scheduler(cfg.diffusion, "ddpm"))
    g = torch.Generator().manual_seed(seed)
    image = torch.rand((1, 4, *shape), generator=g) * 2 - 1
    labels = torch.randint(0, n_cond, (1, *shape), generator=g)
    prior = torch.zeros((1, 4, *shape)) if cfg.diffusion.prior != "none" else None
    base = _rss("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:  # "5" resets the peak (VmHWM) to the current RSS
        fh.write("5")
    t0 = time.perf_counter()
    optimizer_step(net, opt, inferer, [(image, labels, prior)], cfg, g, n_cond, cfg.train.lr, amp=precision == "bf16")
    sec = time.perf_counter() - t0
    return {"shape": list(shape), "voxels": shape[0] * shape[1] * shape[2], "checkpointing": checkpointing,
            "precision": precision,
            "rss_before_gb": round(base / GB, 3), "peak_growth_gb": round((_rss("VmHWM") - base) / GB, 3),
            "seconds": round(sec, 1), "n_params": count_parameters(net)}


def fit(points: list[tuple[int, float]]) -> tuple[float, float] | None:
    """Least-squares line growth = a + b * voxels (needs two distinct grids)."""
    import numpy as np

    if len({v for v, _ in points}) < 2:
        return None
    b, a = np.polyfit([v for v, _ in points], [g for _, g in points], 1)
    return float(a), float(b)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="brats-gpu")
    p.add_argument("--shapes", nargs="+", default=["48,48,32", "64,64,48", "80,80,64"],
                   help="reduced grids X,Y,Z (each side a multiple of 16 for brats-gpu)")
    p.add_argument("--limit-gb", type=float, default=16.0, help="skip a setting projected above this RSS")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpointing", nargs="+", choices=["off", "on"], default=["off", "on"])
    p.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"],
                   help="float32, and/or the bfloat16 autocast of train.amp (CPU autocast here)")
    p.add_argument("--rows", type=Path, default=None, help="JSON file keeping the measured rows across runs")
    p.add_argument("--child", nargs=5, metavar=("X", "Y", "Z", "CKPT", "PRECISION"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.profile, tuple(int(s) for s in a.child[:3]), a.child[3] == "1", a.seed, a.child[4])))
        return {}

    from components.io import write_json_atomic
    from components.synthesis.config import load_profile

    cfg = load_profile(a.profile)
    full = tuple(cfg.data.shape)
    factor = 2 ** (len(cfg.network.channels) - 1)
    shapes = [tuple(int(s) for s in txt.split(",")) for txt in a.shapes]
    bad = [s for s in shapes if len(s) != 3 or any(v % factor for v in s)]
    if bad:
        p.error(f"every side of --shapes must be a multiple of {factor} for {a.profile}; {bad} are not")
    shapes.sort(key=lambda s: s[0] * s[1] * s[2])
    rows = json.loads(a.rows.read_text()) if a.rows and a.rows.is_file() else []
    rows = [{"precision": "fp32", **r} for r in rows if r.get("profile", a.profile) == a.profile]
    skipped = []
    settings = [(c == "on", prec) for prec in a.precision for c in a.checkpointing]
    for ckpt, prec in settings:
        for shape in shapes:
            vox = shape[0] * shape[1] * shape[2]
            same = [r for r in rows if r["checkpointing"] == ckpt and r["precision"] == prec]
            if any(r["shape"] == list(shape) for r in same):
                continue
            done = [(r["voxels"], r["peak_growth_gb"]) for r in same]
            line = fit(done)
            if done:
                est = line[0] + line[1] * vox if line else done[-1][1] * vox / done[-1][0]
                base = max(r["rss_before_gb"] for r in rows)
                if base + est > a.limit_gb:
                    skipped.append({"shape": list(shape), "checkpointing": ckpt, "precision": prec,
                                    "projected_rss_gb": round(base + est, 1)})
                    print(f"skip {shape} checkpointing={ckpt} {prec}: projected {base + est:.1f} GB RSS > {a.limit_gb} GB",
                          flush=True)
                    continue
            cmd = [sys.executable, str(Path(__file__).resolve()), "--profile", a.profile, "--seed", str(a.seed),
                   "--child", *map(str, shape), "1" if ckpt else "0", prec]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if out.returncode:
                raise SystemExit(f"{shape} checkpointing={ckpt} {prec} failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
            row = {**json.loads(out.stdout.strip().splitlines()[-1]), "profile": a.profile}
            rows.append(row)
            if a.rows:
                write_json_atomic(a.rows, rows)
            print(f"measured {'x'.join(map(str, shape))} checkpointing={ckpt} {prec}", flush=True)
    for row in sorted(rows, key=lambda r: (r["precision"], r["checkpointing"], r["voxels"])):
        print(f"{'x'.join(map(str, row['shape'])):>10s} {row['precision']} checkpointing={str(row['checkpointing']):5s} "
              f"{row['voxels']:>9,d} voxels: peak growth {row['peak_growth_gb']:6.2f} GB (RSS before "
              f"{row['rss_before_gb']:.2f} GB), {row['seconds']:.1f} s/step", flush=True)

    n_params = rows[0]["n_params"] if rows else 0
    fixed_gb = 4 * n_params * 4 / GB  # weights, gradients, Adam's two moments (float32): what no grid changes
    vox_full = full[0] * full[1] * full[2]
    projection = {}
    for prec in ("fp32", "bf16"):
        for ckpt in (False, True):
            line = fit([(r["voxels"], r["peak_growth_gb"]) for r in rows
                        if r["checkpointing"] == ckpt and r["precision"] == prec])
            if line is None:
                continue
            growth = line[0] + line[1] * vox_full
            total = growth + n_params * 4 / GB  # + the weights; gradients and Adam's moments are in the growth
            key = ("with" if ckpt else "without") + ("" if prec == "fp32" else "_bf16")
            projection[key] = {
                "intercept_gb": round(line[0], 3), "gb_per_mvoxel": round(line[1] * 1e6, 3),
                "step_growth_gb": round(growth, 1), "projected_peak_gb": round(total, 1), "fits_24gb": bool(total <= 24.0)}
            print(f"projected {a.profile} {'x'.join(map(str, full))} {prec} {'with' if ckpt else 'without'} checkpointing: "
                  f"{total:.1f} GB ({line[1] * 1e6:.2f} GB per million voxels; fits 24 GB: {total <= 24.0})", flush=True)
    result = {"bench": "memory", "profile": a.profile, "full_shape": list(full), "n_params": n_params,
              "fixed_gb_weights_grads_adam": round(fixed_gb, 2), "rows": rows, "skipped": skipped,
              "projection": projection, "memory_kind": "cpu_peak_rss_growth"}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
