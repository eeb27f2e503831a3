"""Figures of a synthesizer training run: the real-vs-synthetic montage and the loss curve."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from components.io import atomic_path
from components.synthesis.config import SynthesizerConfig
from components.synthesis.data import HEAD, TrainingSet, condition_channels
from components.synthesis.sampling import make_generator, sample_images
from data_catalog import MODALITIES, LabelScheme


def labels_to_seg(labels: np.ndarray, scheme: LabelScheme) -> np.ndarray:
    """Conditioning map back to seg values (for montage overlays)."""
    seg = np.zeros(labels.shape, dtype=np.uint8)
    for value, channel in condition_channels(scheme).items():
        seg[labels == channel] = value
    return seg


def plot_loss(rows: list[dict[str, float]], out: Path, title: str) -> Path | None:
    """The loss per step and its moving mean (log scale) as a PNG at ``out``; None without rows."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([r["step"] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    k = max(1, len(loss) // 20)
    smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, loss, lw=0.6, alpha=0.5, label="loss")
    ax.plot(steps[k - 1:], smooth, lw=1.5, label=f"moving mean ({k})")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return out


def training_montage(net: torch.nn.Module, ts: TrainingSet, cfg: SynthesizerConfig, scheme: LabelScheme, n_condition: int,
                     out: Path, progress: bool | None = None, prior: torch.Tensor | None = None) -> Path | None:
    """Real vs synthetic (DDIM with the profile's eta, EMA weights) for the first training masks, on the model grid."""
    from components.viz import render_montage

    n = min(cfg.train.montage_cases, len(ts))
    if n == 0:
        return None
    device = next(net.parameters()).device
    labels = torch.stack([torch.from_numpy(ts.get(i)[1]).long() for i in range(n)])
    gens = [make_generator(cfg.seed + 7919 * (i + 1), device) for i in range(n)]
    x = sample_images(net, labels, n_condition, cfg.diffusion, gens, sampler="ddim", steps=cfg.train.montage_steps,
                      eta=cfg.sample.eta, amp=cfg.train.amp, progress=progress, prior=prior).numpy()
    cases = []
    for i in range(n):
        real, lab = ts.get(i)
        head = lab >= HEAD
        seg = labels_to_seg(lab, scheme)
        for tag, vol in (("real", real), ("synthetic", x[i])):
            disp = (np.clip(vol, -1, 1) + 1.0) * 0.5 * head[None]  # display scale: 0 outside the head
            cases.append({"case_id": f"{ts.case_ids[i]}\n{tag}", "images": {m: disp[c] for c, m in enumerate(MODALITIES)},
                          "seg": seg, "affine": ts.affine(i)})
    return render_montage(cases, out, title=f"real vs synthetic (DDIM {cfg.train.montage_steps}, eta "
                                            f"{cfg.sample.eta:g}, same masks) "
                                            f"- {cfg.profile}")
