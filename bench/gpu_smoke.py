"""GPU smoke test of the full-size ``brats-gpu`` profile: one training step (with and without gradient
checkpointing) and one sampling step, at the profile's grid on CUDA, with peak memory and seconds.

    .venv/bin/python bench/gpu_smoke.py [--profile brats-gpu] [--checkpointing off on] [--batch N]

Training step: the training loop's own ``optimizer_step`` (bfloat16 autocast with ``train.amp``,
forward, loss, backward, gradient clipping, Adam step), batch ``train.batch_size``, one micro-batch,
random data on the profile's grid; it runs twice and both times are printed (the first includes
cuDNN's algorithm search). Sampling step: one ``sample_images`` call of one step with the profile's
sampler, ``sample.batch`` volumes. Peak memory: ``torch.cuda.max_memory_allocated`` (reset before each
part; what the caching allocator reserves is printed beside it). Exits with a message, status 2, when
no CUDA device is present. Last line: a JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

GB = 1024**3


def _measure(fn, device: torch.device) -> tuple[float, float, float]:
    """(seconds, peak allocated GB, peak reserved GB) of ``fn()`` on ``device``."""
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize(device)
    return (time.perf_counter() - t0, torch.cuda.max_memory_allocated(device) / GB,
            torch.cuda.max_memory_reserved(device) / GB)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="brats-gpu")
    p.add_argument("--checkpointing", nargs="+", choices=["off", "on"], default=["off", "on"])
    p.add_argument("--batch", type=int, default=None, help="sampling batch (default: the profile's sample.batch)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device here (torch.cuda.is_available() is False); run it on a GPU machine. "
              "bench/memory.py measures the training step on the CPU.", file=sys.stderr)
        return 2

    from monai.inferers import DiffusionInferer

    from components.synthesis.config import load_profile
    from components.synthesis.data import n_condition_channels
    from components.synthesis.network import build_network, build_scheduler, count_parameters, prior_channels
    from components.synthesis.objective import optimizer_step
    from components.synthesis.sampling import make_generator, sample_images
    from data_catalog import load_label_scheme

    device = torch.device("cuda")
    cfg = load_profile(a.profile)
    shape = tuple(cfg.data.train_crop or cfg.data.shape)
    n_cond = n_condition_channels(load_label_scheme("brats2023"))
    n_prior = prior_channels(cfg.diffusion)
    print(f"{a.profile}: grid {tuple(cfg.data.shape)}, training crop {shape}, {torch.cuda.get_device_name(device)}, "
          f"amp {cfg.train.amp}", flush=True)
    result: dict = {"bench": "gpu_smoke", "profile": a.profile, "device": torch.cuda.get_device_name(device),
                    "train_shape": list(shape), "amp": cfg.train.amp, "train": {}}
    g = torch.Generator().manual_seed(a.seed)
    B = cfg.train.batch_size
    image = torch.rand((B, 4, *shape), generator=g) * 2 - 1
    labels = torch.randint(0, n_cond, (B, *shape), generator=g)
    prior = torch.zeros((B, n_prior, *shape)) if n_prior else None
    for ckpt in (c == "on" for c in a.checkpointing):
        run = cfg.model_copy(update={
            "network": cfg.network.model_copy(update={"gradient_checkpointing": ckpt}),
            "train": cfg.train.model_copy(update={"grad_accum": 1})})
        net = build_network(run.network, n_cond, seed=a.seed, diffusion=run.diffusion).to(device).train()
        opt = torch.optim.Adam(net.parameters(), lr=run.train.lr)
        inferer = DiffusionInferer(build_scheduler(run.diffusion, "ddpm"))

        def step(net=net, opt=opt, inferer=inferer, run=run):
            optimizer_step(net, opt, inferer, [(image, labels, prior)], run, g, n_cond, run.train.lr)

        try:
            first = _measure(step, device)
            second = _measure(step, device)
        except torch.cuda.OutOfMemoryError as err:
            print(f"training step, checkpointing={ckpt}: out of memory ({err})", flush=True)
            result["train"]["on" if ckpt else "off"] = {"out_of_memory": True}
        else:
            result["train"]["on" if ckpt else "off"] = {
                "s_first": round(first[0], 2), "s_second": round(second[0], 2),
                "peak_allocated_gb": round(max(first[1], second[1]), 2), "peak_reserved_gb": round(max(first[2], second[2]), 2)}
            print(f"training step, checkpointing={ckpt}: {first[0]:.2f} s first, {second[0]:.2f} s second, peak "
                  f"allocated {max(first[1], second[1]):.2f} GB (reserved {max(first[2], second[2]):.2f} GB)", flush=True)
        result["n_params"] = count_parameters(net)
        del net, opt
        torch.cuda.empty_cache()

    batch = a.batch or cfg.sample.batch
    net = build_network(cfg.network, n_cond, seed=a.seed, diffusion=cfg.diffusion).to(device).eval()
    lab = torch.randint(0, n_cond, (batch, *cfg.data.shape), generator=g)
    pri = torch.zeros((n_prior, *cfg.data.shape)) if n_prior else None
    gens = [make_generator(a.seed + i, device) for i in range(batch)]
    sampler = cfg.sample.sampler if cfg.sample.sampler != "ddpm" else "ddim"  # one step: DDPM runs all T

    def sample():
        sample_images(net, lab, n_cond, cfg.diffusion, gens, sampler=sampler, steps=1, eta=cfg.sample.eta,
                      amp=cfg.train.amp, progress=False, prior=pri)

    try:
        first, second = _measure(sample, device), _measure(sample, device)
    except torch.cuda.OutOfMemoryError as err:
        print(f"sampling step, batch {batch}: out of memory ({err})", flush=True)
        result["sample"] = {"batch": batch, "out_of_memory": True}
    else:
        result["sample"] = {"batch": batch, "sampler": sampler, "s_first": round(first[0], 2), "s_second": round(second[0], 2),
                            "peak_allocated_gb": round(max(first[1], second[1]), 2)}
        print(f"sampling step ({sampler}), batch {batch}, grid {tuple(cfg.data.shape)}: {first[0]:.2f} s first, "
              f"{second[0]:.2f} s second, peak allocated {max(first[1], second[1]):.2f} GB", flush=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
