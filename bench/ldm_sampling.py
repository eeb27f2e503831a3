"""Benchmark: seconds per volume of the ldm sampler (latent DDIM + decoding) against the pixel-space ddpm
sampler at the same output shape, same sampler and step count, measured in one run.

    .venv/bin/python bench/ldm_sampling.py                   # cpu-demo networks, 40 x 48 x 40, DDIM 25
    .venv/bin/python bench/ldm_sampling.py --ldm-profile brats-gpu --ddpm-profile brats-gpu --shape 144 176 112

Both run the code path of their synthesize stage (components.ldm.sampling.generate without its model
loading, components.synthesis.sampling.sample_images) with random weights: the cost does not depend
on them. Each figure is the median of --repeats volumes after a one-step warm-up. Peak memory: the
process's peak RSS on the CPU (reset before each sampler, Linux), peak allocated CUDA memory on a GPU.
The last line printed is a JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.sampling import _labels, _peak_rss_mb, _reset_peak_rss  # noqa: E402
from components.devices import resolve_device  # noqa: E402
from components.ldm.config import load_profile as load_ldm_profile  # noqa: E402
from components.ldm.networks import build_autoencoder, build_unet, count_parameters, latent_condition  # noqa: E402
from components.ldm.sampling import decode_latents, sample_latents  # noqa: E402
from components.synthesis.config import load_profile as load_ddpm_profile  # noqa: E402
from components.synthesis.data import n_condition_channels  # noqa: E402
from components.synthesis.network import build_network, place_network, prior_channels  # noqa: E402
from components.synthesis.sampling import make_generator, sample_images  # noqa: E402
from data_catalog import load_label_scheme  # noqa: E402


def _timed(fn, device: torch.device, repeats: int, steps: int) -> tuple[float, float, list[float]]:
    """(median seconds, peak memory MB, all seconds) of ``fn(steps)`` run ``repeats`` times after a
    one-step warm-up (allocator, kernels)."""
    fn(1)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        _reset_peak_rss()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(steps)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _peak_rss_mb()
    return statistics.median(times), peak, times


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ldm-profile", default="cpu-demo")
    p.add_argument("--ddpm-profile", default="cpu-demo")
    p.add_argument("--shape", type=int, nargs=3, default=None, help="output shape (default: the ldm profile's grid)")
    p.add_argument("--steps", type=int, default=25, help="DDIM steps for both")
    p.add_argument("--eta", type=float, default=1.0, help="DDIM eta for both")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    lcfg, dcfg = load_ldm_profile(a.ldm_profile), load_ddpm_profile(a.ddpm_profile)
    shape = tuple(a.shape) if a.shape else lcfg.data.shape
    lcfg = lcfg.model_copy(update={"data": lcfg.data.model_copy(update={"shape": shape})})
    lcfg = type(lcfg).model_validate(lcfg.model_dump())  # re-check that the shape fits both networks
    device = resolve_device(a.device, "bench")
    n_cond = n_condition_channels(load_label_scheme("brats2023"))
    labels = _labels(shape).to(device)

    ae = build_autoencoder(lcfg).to(device).eval()
    unet = build_unet(lcfg, n_cond).to(device).eval()
    cond = latent_condition(labels, n_cond, lcfg.autoencoder.factor)
    z_holder: list[torch.Tensor] = []

    def ldm_latent(steps: int) -> None:
        z_holder[:] = [sample_latents(unet, cond, lcfg.autoencoder.latent_channels, lcfg.diffusion,
                                      [make_generator(a.seed, device)], "ddim", steps, a.eta, lcfg.amp)]

    def ldm_decode(steps: int) -> None:
        if not z_holder:
            ldm_latent(1)
        decode_latents(ae, z_holder[0], 1.0, lcfg.amp)

    def ldm_all(steps: int) -> None:
        ldm_latent(steps)
        ldm_decode(steps)

    net = place_network(build_network(dcfg.network, n_cond, seed=a.seed, diffusion=dcfg.diffusion), device).eval()
    n_prior = prior_channels(dcfg.diffusion)
    prior = torch.zeros((n_prior, *shape), device=device) if n_prior else None

    def ddpm_all(steps: int) -> None:
        sample_images(net, labels, n_cond, dcfg.diffusion, [make_generator(a.seed, device)], sampler="ddim",
                      steps=steps, eta=a.eta, amp=dcfg.train.amp, prior=prior)

    print(f"shape {shape}, DDIM {a.steps} steps eta {a.eta}, device {device}, torch threads {torch.get_num_threads()}, "
          f"median of {a.repeats}", flush=True)
    rows = {}
    with torch.no_grad():
        for key, fn in (("ldm", ldm_all), ("ldm_latent_loop", ldm_latent), ("ldm_decode", ldm_decode), ("ddpm", ddpm_all)):
            s, peak, times = _timed(fn, device, a.repeats, a.steps)
            rows[key] = {"s_per_volume": round(s, 3), "peak_memory_mb": round(peak, 1), "runs": [round(t, 3) for t in times]}
    params = {"ldm": count_parameters(ae) + count_parameters(unet), "ldm_latent_loop": count_parameters(unet),
              "ldm_decode": count_parameters(ae), "ddpm": count_parameters(net)}
    print(f"{'sampler':18s} {'grid':>14s} {'params':>11s} {'s/volume':>9s} {'peak MB':>8s}")
    for key, r in rows.items():
        grid = "x".join(map(str, lcfg.latent_shape if key == "ldm_latent_loop" else shape))
        print(f"{key:18s} {grid:>14s} {params[key]:>11,d} {r['s_per_volume']:9.3f} {r['peak_memory_mb']:8.0f}")
    speedup = rows["ddpm"]["s_per_volume"] / rows["ldm"]["s_per_volume"]
    print(f"ldm is {speedup:.1f}x faster per volume than pixel-space ddpm at this shape")
    result = {"bench": "ldm_sampling", "ldm_profile": lcfg.profile, "ddpm_profile": dcfg.profile, "shape": list(shape),
              "latent_shape": list(lcfg.latent_shape), "steps": a.steps, "eta": a.eta, "device": str(device),
              "torch_threads": torch.get_num_threads(), "n_params": params, **rows, "speedup": round(speedup, 2),
              "memory_kind": "cuda_max_allocated" if device.type == "cuda" else "process_peak_rss"}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
