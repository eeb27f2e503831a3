"""Benchmark: seconds per volume of our default sampler (the profile's DDIM) against the full-length DDPM
reference (Med-DDPM/GliomaGen sample with 1000 ancestral steps), same network and shape, one run.

    .venv/bin/python bench/sampling.py                       # cpu-demo network, small shape on a CPU
    .venv/bin/python bench/sampling.py --profile brats-gpu   # on a GPU: the profile's full shape

Both samplers run the same code path as ``python -m flows synthesize`` (components.synthesis.sampling)
with random weights (the cost does not depend on them). Peak memory: the process's peak RSS on the
CPU (the high-water mark reset before each sampler, Linux), peak allocated CUDA memory on a GPU.
The last line printed is a JSON object with the figures and the speed-up.
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

from components.synthesis.config import load_profile  # noqa: E402
from components.synthesis.data import n_condition_channels  # noqa: E402
from components.synthesis.network import build_network, count_parameters, place_network, prior_channels, resolve_device  # noqa: E402
from components.synthesis.sampling import make_generator, sample_images  # noqa: E402
from data_catalog import load_label_scheme  # noqa: E402

CPU_SHAPE = (24, 24, 24)


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:  # "5" resets VmHWM to the current RSS
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _labels(shape: tuple[int, int, int]) -> torch.Tensor:
    """A head ellipsoid with a nested tumour: 0 background, 1 head, 2-4 tumour labels."""
    x, y, z = np.ogrid[: shape[0], : shape[1], : shape[2]]
    c = np.array(shape) / 2.0
    r = np.sqrt(((x - c[0]) / (0.45 * shape[0])) ** 2 + ((y - c[1]) / (0.45 * shape[1])) ** 2
                + ((z - c[2]) / (0.45 * shape[2])) ** 2)
    lab = np.where(r <= 1.0, 1, 0)
    lab[r <= 0.35] = 3
    lab[r <= 0.2] = 4
    lab[r <= 0.1] = 2
    return torch.from_numpy(lab)[None].long()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="cpu-demo", help="synthesizer profile whose network is timed")
    p.add_argument("--shape", type=int, nargs=3, default=None,
                   help=f"volume shape (default: the profile's on a GPU, {CPU_SHAPE} on a CPU)")
    p.add_argument("--ddim-steps", type=int, default=None, help="default: the profile's sampler steps")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    cfg = load_profile(a.profile)
    device = resolve_device(a.device)
    shape = tuple(a.shape) if a.shape else (cfg.data.shape if device.type == "cuda" else CPU_SHAPE)
    factor = 2 ** (len(cfg.network.channels) - 1)
    if any(s % factor for s in shape):
        p.error(f"every side of --shape must be a multiple of {factor} for this network, got {shape}")
    scheme = load_label_scheme("brats2023")
    n_cond = n_condition_channels(scheme)
    net = place_network(build_network(cfg.network, n_cond, seed=a.seed, diffusion=cfg.diffusion), device).eval()
    labels = _labels(shape).to(device)
    n_prior = prior_channels(cfg.diffusion)  # the timing does not depend on the prior's values
    prior = torch.zeros((n_prior, *shape), device=device) if n_prior else None
    T = cfg.diffusion.num_train_timesteps
    ddim_steps = a.ddim_steps or cfg.sample.steps
    print(f"profile {cfg.profile}: {count_parameters(net):,} parameters, shape {shape} (4 + {n_cond} + {n_prior} channels in), "
          f"device {device}, torch threads {torch.get_num_threads()}", flush=True)
    with torch.no_grad():  # warm-up (allocator, kernels)
        net(torch.cat([torch.zeros((1, 4, *shape), device=device), torch.zeros((1, n_cond + n_prior, *shape), device=device)], 1),
            timesteps=torch.zeros(1, dtype=torch.long, device=device))

    figures: dict[str, dict[str, float]] = {}
    for sampler, steps in (("ddim", ddim_steps), ("ddpm", T)):
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            _reset_peak_rss()
        t0 = time.perf_counter()
        sample_images(net, labels, n_cond, cfg.diffusion, [make_generator(a.seed, device)], sampler=sampler,
                      steps=steps, eta=cfg.sample.eta, amp=cfg.train.amp, prior=prior)
        if device.type == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            peak = _peak_rss_mb()
        dt = time.perf_counter() - t0
        figures[sampler] = {"steps": steps, "s_per_volume": dt, "s_per_step": dt / steps, "peak_memory_mb": peak}
        print(f"{sampler:4s} {steps:5d} steps: {dt:8.2f} s/volume ({dt / steps * 1000:.1f} ms/step), "
              f"peak memory {peak:.0f} MB", flush=True)

    result = {
        "bench": "sampling", "profile": cfg.profile, "shape": list(shape), "device": str(device),
        "torch_threads": torch.get_num_threads(), "n_params": count_parameters(net),
        "ddim_steps": ddim_steps, "ddim_s_per_volume": round(figures["ddim"]["s_per_volume"], 3),
        "ddpm_steps": T, "ddpm_s_per_volume": round(figures["ddpm"]["s_per_volume"], 3),
        "speedup": round(figures["ddpm"]["s_per_volume"] / figures["ddim"]["s_per_volume"], 2),
        "peak_memory_mb": {k: round(v["peak_memory_mb"], 1) for k, v in figures.items()},
        "memory_kind": "cuda_max_allocated" if device.type == "cuda" else "process_peak_rss",
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
