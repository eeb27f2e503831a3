"""How well a trained synthesizer denoises at each noise level: the diagnostic behind the cpu-demo recipe.

    .venv/bin/python bench/denoiser_levels.py --workspace workspace --model synthesizer-demo [--cases 2]

For ``--cases`` prepared training cases of the model, each noise level sigma (x_t = sqrt(a) x_0 +
sqrt(1 - a) eps, sigma = sqrt((1 - a) / a)) noises the real image once, asks the model's EMA network
for epsilon and reports, inside the head, the RMSE of the one-step estimate of x_0 and its voxel
noise (mean |Laplacian|, the same measure as bench/sampling_quality.py, beside the real image's).
With ``--figure`` a PNG shows the axial mid-slice of the first case's t1n: real, x_t, estimate.

What it showed on the 600-step CPU demo model (2 cases): at sigma <= 2.5 the estimate is a brain with the real
anatomy (ventricles, cortex; voxel noise 0.44 at sigma 2.5, real 0.63), while from the mask alone
(sigma >= 10) it is a speckled blob, not the smooth mean anatomy an exact model gives: voxel noise
rises to 0.67 at sigma 10 and 0.76 at sigma 150. Samples take their layout there. Training more at high sigma (lognormal p_mean 0, p_std 1.5)
smoothed that estimate but left the low-sigma steps noisier, and the samples got worse (voxel noise
1.26 against 0.74): within 600 CPU steps the model cannot be good at both ends.
Last line: a JSON object, one entry per sigma.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sampling_quality import model_cases_parser, prepared_cases, voxel_noise  # noqa: E402

from components.synthesis.data import one_hot  # noqa: E402
from components.synthesis.network import build_scheduler  # noqa: E402
from components.synthesis.store import load_trained_model  # noqa: E402

SIGMAS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.5, 5.0, 10.0, 30.0, 150.0)


def main() -> int:
    ap = model_cases_parser(__doc__)
    ap.add_argument("--sigmas", type=float, nargs="+", default=list(SIGMAS))
    ap.add_argument("--figure", type=Path, default=None, help="write the slice figure here (PNG)")
    a = ap.parse_args()

    tm = load_trained_model(a.workspace, a.model)
    prepared = prepared_cases(tm, a.cases)
    alphas = build_scheduler(tm.config.diffusion).alphas_cumprod
    sigma_t = ((1 - alphas) / alphas).sqrt()
    g = torch.Generator().manual_seed(a.seed)
    per_sigma: dict[float, dict[str, list[float]]] = {s: {"rmse": [], "noise": []} for s in a.sigmas}
    real_noise, panels = [], []
    for k, (_, image, labels) in enumerate(prepared):
        img, lab = torch.from_numpy(image)[None], torch.from_numpy(labels)[None]
        head = (lab > 0)[0].numpy()
        cond = one_hot(lab, tm.n_condition).to(tm.device)
        if tm.prior is not None:  # a model trained with a prior takes it after the mask
            cond = torch.cat([cond, tm.prior[None].to(tm.device)], 1)
        real_noise.append(voxel_noise(img[0].numpy(), head))
        for s in a.sigmas:
            t = int((sigma_t - s).abs().argmin())
            al = alphas[t]
            noise = torch.randn(img.shape, generator=g)
            xt = al.sqrt() * img + (1 - al).sqrt() * noise
            with torch.no_grad():
                eps = tm.network(torch.cat([xt.to(tm.device), cond], 1), timesteps=torch.tensor([t], device=tm.device))
            x0 = ((xt - (1 - al).sqrt() * eps.float().cpu()) / al.sqrt()).clamp(-1, 1)
            per_sigma[s]["rmse"].append(float(((x0 - img)[0][:, head] ** 2).mean().sqrt()))
            per_sigma[s]["noise"].append(voxel_noise(x0[0].numpy(), head))
            if k == 0:
                panels.append((s, xt[0, 0].numpy(), x0[0, 0].numpy()))
        if k == 0:
            real0 = img[0, 0].numpy()
    rows = {}
    print(f"model {a.model} (step {tm.step}), {len(prepared)} cases; real voxel noise {np.mean(real_noise):.3f}")
    for s in a.sigmas:
        rows[str(s)] = {"rmse_x0": round(float(np.mean(per_sigma[s]["rmse"])), 4),
                        "voxel_noise_x0": round(float(np.mean(per_sigma[s]["noise"])), 4)}
        print(f"sigma {s:7.2f}: x0 estimate RMSE {rows[str(s)]['rmse_x0']:.3f}, voxel noise "
              f"{rows[str(s)]['voxel_noise_x0']:.3f}", flush=True)
    if a.figure:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        z = real0.shape[2] // 2
        fig, ax = plt.subplots(2, len(panels) + 1, figsize=(2 * (len(panels) + 1), 4.4))
        ax[0, 0].imshow(real0[:, :, z].T, cmap="gray", origin="lower", vmin=-1, vmax=1)
        ax[0, 0].set_title("real t1n", fontsize=8)
        for j, (s, xt, x0) in enumerate(panels, start=1):
            ax[0, j].imshow(xt[:, :, z].T, cmap="gray", origin="lower")
            ax[0, j].set_title(f"x_t, sigma {s:g}", fontsize=8)
            ax[1, j].imshow(x0[:, :, z].T, cmap="gray", origin="lower", vmin=-1, vmax=1)
            ax[1, j].set_title("estimate of x_0", fontsize=8)
        for axis in ax.ravel():
            axis.axis("off")
        fig.tight_layout()
        a.figure.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(a.figure, dpi=80)
        print(f"figure: {a.figure}")
    print(json.dumps({"bench": "denoiser_levels", "model": a.model, "cases": len(prepared),
                      "real_voxel_noise": round(float(np.mean(real_noise)), 4), "sigmas": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
