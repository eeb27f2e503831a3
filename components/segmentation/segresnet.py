"""MONAI SegResNet trained and applied as MONAI's model-zoo bundle ``brats_mri_segmentation`` does.

The recipe (``SCHEDULES["full"]``): ``SegResNet(blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1),
init_filters=16, in_channels=4, dropout_prob=0.2)`` with one sigmoid output per region, Dice loss on
the sigmoids (squared denominator), Adam 1e-4 with weight decay 1e-5 and a cosine learning rate over
300 epochs, batch 1, mixed precision on CUDA; z-scored channels (non-zero voxels), random
224 x 224 x 144 crops, flips on the three axes, random intensity scale and shift; sliding-window
inference over 240 x 240 x 160 windows (overlap 0.5), each region where its sigmoid exceeds 0.5.

What differs from the bundle, and why:
- Regions come from the dataset's label scheme (``nnunet_regions``: WT, TC, ET, and RC for
  ``brats2024_post``), in that order, and go back to labels in that order; the bundle's output
  channels are TC, WT, ET for BraTS 2018 labels.
- An image smaller than the crop is zero-padded to it (after normalisation, so the padding is the
  background); sliding-window inference pads an image smaller than a window the same way and crops
  the prediction back. Every network input is therefore exactly a crop or a window, whose sides must
  be multiples of 8 (SegResNet halves the grid three times).
- Every random draw of training iteration ``i`` (which case, its crop, flips and intensity changes,
  the dropout mask) is seeded from (seed, i), so a resumed training replays an uninterrupted one and,
  on the CPU, a seed replays the whole run. Nothing reads or reseeds the process-wide generators
  except the network's initialisation, done inside ``torch.random.fork_rng`` under a lock.

Input channels are in the bundle's order: T1-Gd, T1, T2, FLAIR (``t1c, t1n, t2w, t2f``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, model_validator

from components.config_base import FrozenModel
from components.devices import resolve_device as _resolve_device
from components.errors import InputError
from components.io import atomic_path, save_nifti, write_json_atomic
from components.segmentation.nnunet import ScheduleName
from data_catalog import MODALITIES, LabelScheme, load_label_scheme

if TYPE_CHECKING:  # torch is imported where it is used: configs validate without it
    import torch

log = logging.getLogger(__name__)

CHANNELS: tuple[str, ...] = ("t1c", "t1n", "t2w", "t2f")  # the bundle's input order: T1-Gd, T1, T2, FLAIR
CHECKPOINT = "checkpoint_latest.pt"
MODEL = "model.pt"
STAMP = "train.json"
HISTORY = "history.json"
FORMAT = 1

# The bundle's published validation Dice (BraTS 2018, 285 cases, its own 200/42/43 split; metadata.json).
BUNDLE_DICE = {"TC": 0.8559, "WT": 0.9026, "ET": 0.7905}


class SegresnetError(InputError):
    """A case, model folder or schedule the SegResNet backend cannot use."""


class SegresnetSchedule(FrozenModel):
    """How SegResNet is built, trained and applied. The defaults are the bundle's recipe (GPU)."""

    description: str = ""
    # network
    init_filters: int = Field(16, ge=1)
    blocks_down: tuple[int, ...] = Field((1, 2, 2, 4), min_length=1)
    blocks_up: tuple[int, ...] = (1, 1, 1)
    dropout_prob: float | None = Field(0.2, ge=0.0, lt=1.0)
    # optimisation
    epochs: int = Field(300, ge=1, description="cosine learning-rate period (T_max), stepped once per epoch")
    iterations_per_epoch: int | None = Field(None, ge=1, description="None: one pass over the training cases "
                                             "(the bundle's epoch, ceil(cases / batch_size) iterations)")
    batch_size: int = Field(1, ge=1)
    lr: float = Field(1e-4, gt=0.0)
    weight_decay: float = Field(1e-5, ge=0.0)
    amp: bool = Field(True, description="mixed precision (float16 autocast and a grad scaler) on CUDA only")
    # training data
    crop: tuple[int, int, int] = Field((224, 224, 144), description="random crop; a smaller image is zero-padded")
    flip_prob: float = Field(0.5, ge=0.0, le=1.0, description="RandFlipd probability, each of the 3 axes")
    scale_intensity: float = Field(0.1, ge=0.0, description="RandScaleIntensityd factors (prob 1)")
    shift_intensity: float = Field(0.1, ge=0.0, description="RandShiftIntensityd offsets (prob 1)")
    cache: bool = Field(False, description="keep the normalised training cases in memory (small datasets)")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes (spawned)")
    # inference
    roi: tuple[int, int, int] = Field((240, 240, 160), description="sliding window; a smaller image is padded")
    overlap: float = Field(0.5, ge=0.0, lt=1.0)
    sw_batch_size: int = Field(1, ge=1)
    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="a region where its sigmoid exceeds this")
    # running
    device: Literal["auto", "cpu", "cuda"] = "auto"
    checkpoint_every: int = Field(500, ge=1, description="iterations between checkpoint_latest.pt (resume point)")

    @model_validator(mode="after")
    def _sizes(self) -> SegresnetSchedule:
        if len(self.blocks_up) != len(self.blocks_down) - 1:
            raise ValueError(f"blocks_up needs one entry fewer than blocks_down ({len(self.blocks_down)}); "
                             f"found {len(self.blocks_up)}")
        k = self.divisor
        for name in ("crop", "roi"):
            size = getattr(self, name)
            if any(s < 1 or s % k for s in size):
                fit = tuple(max(k, math.ceil(s / k) * k) for s in size)
                raise ValueError(f"{name} {list(size)}: SegResNet with {len(self.blocks_down)} levels needs "
                                 f"multiples of {k}; e.g. {list(fit)}")
        return self

    @property
    def divisor(self) -> int:
        """What every input side must be a multiple of: the network halves the grid once per level."""
        return 2 ** (len(self.blocks_down) - 1)

    def iterations(self, n_cases: int) -> tuple[int, int]:
        """(iterations per epoch, total iterations) for ``n_cases`` training cases."""
        per_epoch = self.iterations_per_epoch or math.ceil(n_cases / self.batch_size)
        return per_epoch, per_epoch * self.epochs


SCHEDULES: dict[ScheduleName, SegresnetSchedule] = {  # the names of nnU-Net's schedules: one --schedule sets both
    "full": SegresnetSchedule(
        description="MONAI model-zoo brats_mri_segmentation recipe: 300 epochs of one pass over the training "
                    "cases, batch 1, crops 224x224x144, AMP on CUDA. Published validation Dice (BraTS 2018, "
                    "200/42/43 split): TC 0.8559, WT 0.9026, ET 0.7905 (the full-scale reference, not a "
                    "number this project measured)",
        cache=False, num_workers=4, checkpoint_every=1000),
    # The recipe at the 4 mm phantom's size (60 x 60 x 39 voxels, 7 training cases) on 2 CPU cores:
    # crops of 32^3 and lr 1e-3 so that 400 iterations learn the whole tumour (200 reached WT Dice 0.51;
    # docs/segresnet.md); one window covers the whole (padded) image at inference.
    "cpu-demo": SegresnetSchedule(
        description="CPU demo on the 4 mm phantom: the bundle's network, loss and augmentations, 10 epochs x 40 "
                    "iterations, batch 2 of 32^3 crops, lr 1e-3, one 64x64x40 window at inference",
        epochs=10, iterations_per_epoch=40, batch_size=2, lr=1e-3, crop=(32, 32, 32), roi=(64, 64, 40),
        device="cpu", cache=True, checkpoint_every=40),
    # Seconds on 2 CPU cores at 16^3, a narrower network: for tests of the plumbing only.
    "tiny": SegresnetSchedule(
        description="tests only: 8 filters, one pass over the training cases, 16^3 crops and windows",
        init_filters=8, epochs=1, crop=(16, 16, 16), roi=(16, 16, 16), device="cpu", cache=True,
        checkpoint_every=2),
}


# --------------------------------------------------------------------------- labels <-> regions
def regions_of(scheme: LabelScheme) -> tuple[tuple[str, tuple[int, ...], int], ...]:
    """The scheme's regions as [name, labels, label written back], in write order."""
    if not scheme.nnunet_regions:
        raise SegresnetError(f"label scheme {scheme.name!r} has no nnunet_regions in data_catalog/label_schemes.yaml;"
                             f" expected the regions a segmenter predicts (a canonical scheme has them)")
    return scheme.nnunet_regions


# By hand: MONAI's ConvertToMultiChannelBasedOnBratsClasses is fixed to BraTS 2018 labels and has no inverse.
def labels_to_regions(seg: np.ndarray, scheme: LabelScheme) -> np.ndarray:
    """A label map (D, H, W) in ``scheme`` -> one binary channel per region (R, D, H, W), float32."""
    return np.stack([np.isin(seg, labels) for _, labels, _ in regions_of(scheme)]).astype(np.float32)


def regions_to_labels(regions: np.ndarray, scheme: LabelScheme) -> np.ndarray:
    """Binary region channels (R, D, H, W) -> a uint8 label map in ``scheme``, regions written in order
    (so WT-only voxels get WT's label, then TC overwrites, then ET)."""
    out = np.zeros(regions.shape[1:], np.uint8)
    for channel, (_, _, value) in zip(regions, regions_of(scheme), strict=True):
        out[channel.astype(bool)] = value
    return out


# --------------------------------------------------------------------------- cases
def load_image(files: Mapping[str, str | Path], case_id: str) -> tuple[np.ndarray, np.ndarray]:
    """The four modalities of a case as (4, D, H, W) float32 in ``CHANNELS`` order, and the affine."""
    from components.io import load_nifti

    arrays, affine, first = [], None, None
    for key in CHANNELS:
        if key not in files:
            raise SegresnetError(f"case {case_id}: no {key} file given (found {sorted(files)}); expected "
                                 f"{', '.join(CHANNELS)}")
        arr, aff, _ = load_nifti(files[key])
        if arr.ndim != 3:
            raise SegresnetError(f"case {case_id}: {files[key]} has shape {arr.shape}; expected a 3-D volume")
        if first is None:
            first, affine = (key, arr.shape), aff
        elif arr.shape != first[1]:
            raise SegresnetError(f"case {case_id}: {files[key]} has shape {arr.shape}; expected {first[1]} as its "
                                 f"{first[0]} file")
        arrays.append(np.asarray(arr, dtype=np.float32))
    return np.stack(arrays), affine


def load_label(files: Mapping[str, str | Path], case_id: str, shape: tuple[int, ...], scheme: LabelScheme) -> np.ndarray:
    """A case's label map (D, H, W), checked against its image shape and label scheme."""
    from components.io import load_nifti

    seg = np.asarray(load_nifti(files["seg"])[0])
    if seg.shape != tuple(shape):
        raise SegresnetError(f"case {case_id}: {files['seg']} has shape {seg.shape}; expected {tuple(shape)} as its "
                             f"images")
    found = set(np.unique(seg).tolist()) - set(scheme.values)
    if found:
        raise SegresnetError(f"case {case_id}: {files['seg']} has labels {sorted(found)}; expected {scheme.values} "
                             f"({scheme.name})")
    return seg


def check_case_headers(files: Mapping[str, str | Path], case_id: str) -> None:
    """Every file of a training case opens as 3-D and has one shape (headers only: cheap)."""
    import nibabel as nib

    shapes = {}
    for key in (*CHANNELS, "seg"):
        if key not in files:
            raise SegresnetError(f"case {case_id}: no {key} file given; expected {', '.join((*CHANNELS, 'seg'))}, "
                                 f"found {sorted(files)}")
        try:
            shapes[key] = tuple(nib.load(str(files[key])).shape)
        except Exception as err:
            raise SegresnetError(f"case {case_id}: {files[key]} cannot be read as NIfTI ({err})") from err
    if len(set(shapes.values())) != 1 or len(shapes["seg"]) != 3:
        raise SegresnetError(f"case {case_id}: expected one 3-D shape for {', '.join(shapes)}; found {shapes}")


def normalize(image: np.ndarray) -> np.ndarray:
    """The bundle's NormalizeIntensity: z-score per channel over its non-zero voxels; zeros stay 0."""
    from monai.transforms import NormalizeIntensity

    return np.asarray(NormalizeIntensity(nonzero=True, channel_wise=True)(image), dtype=np.float32)


# --------------------------------------------------------------------------- training data
def draw_seed(seed: int, *keys: int) -> int:
    """A 32-bit seed for one draw, from the run's seed and the draw's place (iteration, purpose)."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


def case_order(seed: int, n_cases: int, sample: int) -> int:
    """Which case (index into the sorted ids) sample number ``sample`` reads: one seeded permutation of
    the cases per pass, so every case is read once per pass."""
    perm = np.random.default_rng([seed, sample // n_cases]).permutation(n_cases)
    return int(perm[sample % n_cases])


def train_transforms(schedule: SegresnetSchedule) -> Any:
    """The bundle's random transforms, after a zero-pad to the crop for images smaller than it."""
    from monai.transforms import (
        Compose,
        RandFlipd,
        RandScaleIntensityd,
        RandShiftIntensityd,
        RandSpatialCropd,
        SpatialPadd,
    )

    keys = ["image", "label"]
    return Compose([
        SpatialPadd(keys, spatial_size=schedule.crop),
        RandSpatialCropd(keys, roi_size=schedule.crop, random_size=False),
        *(RandFlipd(keys, prob=schedule.flip_prob, spatial_axis=axis) for axis in range(3)),
        RandScaleIntensityd("image", factors=schedule.scale_intensity, prob=1.0),
        RandShiftIntensityd("image", offsets=schedule.shift_intensity, prob=1.0),
    ])


class TrainingSamples:
    """A map-style dataset over the training samples from ``first`` on: sample ``s`` is case
    ``case_order(seed, n, s)`` with its random transforms seeded from (seed, s), so any worker, and a
    resumed run, draws exactly what an uninterrupted run draws."""

    def __init__(self, cases: Sequence[tuple[str, Mapping[str, str]]], scheme: LabelScheme,
                 schedule: SegresnetSchedule, seed: int, first: int, last: int) -> None:
        self.cases = list(cases)
        self.scheme = scheme
        self.schedule = schedule
        self.seed = seed
        self.first, self.last = first, last
        self.transforms = train_transforms(schedule)
        self.cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if index in self.cache:
            return self.cache[index]
        cid, files = self.cases[index]
        image, _ = load_image(files, cid)
        seg = load_label(files, cid, image.shape[1:], self.scheme)
        item = normalize(image), labels_to_regions(seg, self.scheme)
        if self.schedule.cache:
            self.cache[index] = item
        return item

    def __len__(self) -> int:
        return self.last - self.first

    def __getitem__(self, k: int) -> dict[str, Any]:
        import torch

        sample = self.first + k
        index = case_order(self.seed, len(self.cases), sample)
        image, label = self.load(index)
        self.transforms.set_random_state(seed=draw_seed(self.seed, sample, 0))
        out = self.transforms({"image": image, "label": label})
        # plain tensors: MONAI's MetaTensor carries metadata the default collate need not see
        return {"image": torch.as_tensor(out["image"], dtype=torch.float32).as_subclass(torch.Tensor),
                "label": torch.as_tensor(out["label"], dtype=torch.float32).as_subclass(torch.Tensor), "case": index}


# --------------------------------------------------------------------------- network
def _seeded_dropout_class() -> type:
    import torch

    class SeededDropout(torch.nn.Module):
        """The network's dropout, drawing its mask from a generator of its own: torch's dropout reads the
        process-wide generator, which configurations training side by side on threads would share.
        ``channel_wise`` zeroes whole channels, as ``nn.Dropout3d`` does."""

        def __init__(self, p: float, channel_wise: bool, generator: torch.Generator) -> None:
            super().__init__()
            self.p, self.channel_wise, self.generator = p, channel_wise, generator

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not self.training or self.p == 0.0:
                return x
            shape = (*x.shape[:2], *([1] * (x.dim() - 2))) if self.channel_wise else x.shape
            keep = torch.rand(shape, generator=self.generator, device=x.device) >= self.p
            return x * keep.to(x.dtype) / (1.0 - self.p)

    return SeededDropout


_INIT_LOCK = threading.Lock()


def build_network(schedule: SegresnetSchedule, n_regions: int, seed: int, device: torch.device) -> torch.nn.Module:
    """``monai.networks.nets.SegResNet`` as the bundle builds it, initialised from ``seed``."""
    import torch
    from monai.networks.nets import SegResNet

    # MONAI's layers initialise from the process-wide generator and take none: fork it for this block,
    # one network at a time (configurations build theirs on threads; fork_rng restores a shared state).
    with _INIT_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = SegResNet(spatial_dims=3, blocks_down=schedule.blocks_down, blocks_up=schedule.blocks_up,
                        init_filters=schedule.init_filters, in_channels=len(CHANNELS), out_channels=n_regions,
                        dropout_prob=schedule.dropout_prob)
    if schedule.dropout_prob is not None:
        gen = torch.Generator(device=device)
        net.dropout = _seeded_dropout_class()(schedule.dropout_prob, isinstance(net.dropout, torch.nn.Dropout3d), gen)
    return net.to(device)


def resolve_device(schedule: SegresnetSchedule, gpu: str | None = None) -> torch.device:
    """The schedule's device; with ``gpu`` (an id the ablation's GPU pool handed out), that CUDA device."""
    import torch

    device = _resolve_device(schedule.device, "SegResNet")
    if gpu is None or device.type != "cuda":
        return device
    from components.segmentation.gpus import visible_gpu_ids

    ids = visible_gpu_ids()
    return torch.device("cuda", ids.index(gpu) if gpu in ids else int(gpu))


# --------------------------------------------------------------------------- training
@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """A SegResNet model folder, the cases its training set held and how far it trained."""

    model_dir: Path
    train_keys: tuple[str, ...]
    iterations: int           # the schedule's total
    done: int                 # iterations trained so far (== iterations when finished)
    start_iteration: int      # where this call started (0 fresh, a checkpoint's iteration on a resume)
    train_seconds: float      # all training, summed over resumed runs
    finished: bool
    sampled: dict[str, int]   # how many samples each case gave, over the whole training


class TrainingStopped(RuntimeError):
    """Raised by ``train(..., stop_after=n)``: the call stopped as a killed process would."""


def _stamp(schedule: SegresnetSchedule, seed: int, cases: Mapping[str, Mapping[str, str]], scheme: LabelScheme,
           data: Mapping[str, Any]) -> dict[str, Any]:
    return {"format": FORMAT, "schedule": schedule.model_dump(mode="json"), "seed": int(seed),
            "label_scheme": scheme.name, "regions": [r[0] for r in regions_of(scheme)], "channels": list(CHANNELS),
            "train": sorted(cases), "files": {c: {k: str(v) for k, v in sorted(cases[c].items())} for c in sorted(cases)},
            "data": dict(data)}


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    import torch

    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(state, tmp)


def train(model_dir: str | Path, cases: Mapping[str, Mapping[str, str]], label_scheme: str,
          schedule: SegresnetSchedule, seed: int = 0, gpu: str | None = None, data: Mapping[str, Any] | None = None,
          stop_after: int | None = None, label: str = "") -> TrainedModel:
    """Train SegResNet on ``cases`` ({case_id: {t1n, t1c, t2w, t2f, seg: path}}) into ``model_dir``.

    Resumable: the folder's ``train.json`` records the schedule, seed, cases and ``data`` (what the
    files are, e.g. manifest digests) it was started with; a finished folder with the same record is
    not trained again, an unfinished one continues from ``checkpoint_latest.pt`` (written atomically
    every ``checkpoint_every`` iterations) and trains what an uninterrupted run would have, and a
    folder started with anything else is cleared. ``stop_after`` stops the call after that many
    iterations without a checkpoint, as a kill would (time-sliced jobs, and the tests).
    """
    import torch
    from monai.losses import DiceLoss

    from components.progress import tqdm

    model_dir = Path(model_dir)
    scheme = load_label_scheme(label_scheme)
    regions = regions_of(scheme)
    if not cases:
        raise SegresnetError(f"SegResNet in {model_dir}: no training case")
    ids = sorted(cases)
    for cid in ids:
        check_case_headers(cases[cid], cid)
    per_epoch, total = schedule.iterations(len(ids))
    stamp = _stamp(schedule, seed, {c: cases[c] for c in ids}, scheme, data or {})
    stamp_file = model_dir / STAMP
    same = stamp_file.is_file() and json.loads(stamp_file.read_text(encoding="utf-8")) == stamp
    name = label or model_dir.name
    if same and (model_dir / MODEL).is_file():
        final = torch.load(model_dir / MODEL, map_location="cpu", weights_only=True)
        log.info("SegResNet %s: already trained with this schedule, seed and cases (%s)", name, model_dir)
        return TrainedModel(model_dir, tuple(ids), total, total, total, float(final["train_seconds"]), True,
                            dict(final["sampled"]))
    if not same:
        if model_dir.exists():
            shutil.rmtree(model_dir)
        model_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(stamp_file, stamp)

    device = resolve_device(schedule, gpu)
    net = build_network(schedule, len(regions), seed, device)
    opt = torch.optim.Adam(net.parameters(), lr=schedule.lr, weight_decay=schedule.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=schedule.epochs)
    amp = schedule.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    loss_fn = DiceLoss(smooth_nr=0, smooth_dr=1e-5, squared_pred=True, to_onehot_y=False, sigmoid=True)
    start, elapsed0, history, sampled, epoch_losses = 0, 0.0, [], [0] * len(ids), []
    ckpt = model_dir / CHECKPOINT
    if ckpt.is_file():
        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
            net.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
        except Exception as err:  # an unreadable resume point costs the iterations, never the run
            log.warning("SegResNet %s: %s cannot be read (%s); training from iteration 0", name, ckpt, err)
            net = build_network(schedule, len(regions), seed, device)  # nothing half-loaded carries over
            opt = torch.optim.Adam(net.parameters(), lr=schedule.lr, weight_decay=schedule.weight_decay)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=schedule.epochs)
            scaler = torch.amp.GradScaler("cuda", enabled=amp)
        else:
            start, elapsed0 = int(state["iteration"]), float(state["train_seconds"])
            history, sampled = list(state["history"]), list(state["sampled"])
            epoch_losses = [float(v) for v in state.get("epoch_losses", [])]  # the epoch's losses before the kill
            log.info("SegResNet %s: resuming from iteration %d of %d (%s)", name, start, total, ckpt.name)

    samples = TrainingSamples([(c, cases[c]) for c in ids], scheme, schedule, seed, start * schedule.batch_size,
                              total * schedule.batch_size)
    if schedule.cache:  # every case read once, up front (the reads are then not repeated)
        for i in range(len(ids)):
            samples.load(i)
    loader = torch.utils.data.DataLoader(
        samples, batch_size=schedule.batch_size, shuffle=False, num_workers=schedule.num_workers,
        multiprocessing_context="spawn" if schedule.num_workers else None,  # fork under threads can deadlock
        pin_memory=device.type == "cuda", drop_last=False)

    def checkpoint(iteration: int, seconds: float) -> None:
        _save_checkpoint(ckpt, {"format": FORMAT, "iteration": iteration, "train_seconds": seconds,
                                "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                "scaler": scaler.state_dict(), "history": history, "sampled": sampled,
                                "epoch_losses": epoch_losses})
        write_json_atomic(model_dir / HISTORY, history)

    net.train()
    t0 = time.perf_counter()
    log_every = max(1, total // 20)
    bar = tqdm(total=total, initial=start, desc=f"SegResNet {name}", unit="it", disable=None)
    it = start
    for batch in loader:
        if stop_after is not None and it - start >= stop_after:
            bar.close()
            raise TrainingStopped(f"SegResNet {name}: stopped after {stop_after} iterations (at {it} of {total})")
        if schedule.dropout_prob is not None:
            net.dropout.generator.manual_seed(draw_seed(seed, it, 1))
        image = batch["image"].to(device, non_blocking=True)
        target = batch["label"].to(device, non_blocking=True)
        for c in batch["case"].tolist():
            sampled[c] += 1
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            loss = loss_fn(net(image), target)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        value = float(loss.detach())
        epoch_losses.append(value)
        it += 1
        bar.update(1)
        bar.set_postfix(loss=f"{value:.4f}")
        if it % per_epoch == 0:
            history.append({"epoch": it // per_epoch, "iteration": it, "loss": float(np.mean(epoch_losses)),
                            "lr": float(opt.param_groups[0]["lr"]),
                            "elapsed_s": elapsed0 + time.perf_counter() - t0})
            epoch_losses = []
            sched.step()  # the bundle steps its cosine schedule once per epoch
        if it % log_every == 0 or it == total:
            log.info("SegResNet %s: iteration %d/%d (epoch %d/%d), loss %.4f, %.2f s/it", name, it, total,
                     math.ceil(it / per_epoch), schedule.epochs, value, (time.perf_counter() - t0) / (it - start))
        if it % schedule.checkpoint_every == 0 and it < total:
            checkpoint(it, elapsed0 + time.perf_counter() - t0)
    bar.close()
    train_seconds = elapsed0 + time.perf_counter() - t0
    counts = {cid: int(n) for cid, n in zip(ids, sampled, strict=True)}
    write_json_atomic(model_dir / HISTORY, history)
    _save_checkpoint(model_dir / MODEL, {
        "format": FORMAT, "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "label_scheme": scheme.name, "regions": [r[0] for r in regions], "channels": list(CHANNELS),
        "schedule": schedule.model_dump(mode="json"), "iterations": total, "train_seconds": train_seconds, "sampled": counts, "seed": int(seed)})
    ckpt.unlink(missing_ok=True)
    log.info("SegResNet %s: trained %d iterations (%d in this call) in %.1f s -> %s", name, total, total - start,
             train_seconds, model_dir / MODEL)
    return TrainedModel(model_dir, tuple(ids), total, total, start, train_seconds, True, counts)


# --------------------------------------------------------------------------- inference
def load_model(model_dir: str | Path, device: torch.device, label_scheme: str) -> torch.nn.Module:
    """The trained network of ``model_dir`` in eval mode, checked against the label scheme."""
    import torch

    path = Path(model_dir) / MODEL
    if not path.is_file():
        raise SegresnetError(f"no trained SegResNet in {model_dir}: expected {path} (train it first)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("label_scheme") != label_scheme:
        raise SegresnetError(f"SegResNet {path} predicts label scheme {state.get('label_scheme')!r}; the cases are "
                             f"{label_scheme!r}")
    trained = SegresnetSchedule.model_validate(state["schedule"])  # the network as it was built
    net = build_network(trained, len(state["regions"]), 0, device)
    net.load_state_dict(state["model"])
    return net.eval()


def predict(model_dir: str | Path, cases: Mapping[str, Sequence[str | Path]], out_dir: str | Path,
            label_scheme: str, schedule: SegresnetSchedule, gpu: str | None = None) -> dict[str, Path]:
    """Label maps of ``{case_id: [t1n, t1c, t2w, t2f]}`` into ``<out_dir>/<case_id>.nii.gz`` (uint8, the
    input's grid and affine, ``label_scheme``'s labels): sliding-window sigmoids above the threshold,
    regions written back in order."""
    import torch
    from monai.inferers import sliding_window_inference

    from components.progress import tqdm

    scheme = load_label_scheme(label_scheme)
    device = resolve_device(schedule, gpu)
    net = load_model(model_dir, device, scheme.name)
    amp = schedule.amp and device.type == "cuda"
    out_dir = Path(out_dir)
    out = {}
    t0 = time.perf_counter()
    for cid in tqdm(sorted(cases), desc="SegResNet predict", unit="case", disable=None):
        paths = list(cases[cid])
        if len(paths) != len(MODALITIES):
            raise SegresnetError(f"case {cid}: {len(paths)} files given; expected {', '.join(MODALITIES)}")
        image, affine = load_image(dict(zip(MODALITIES, paths, strict=True)), cid)
        x = torch.as_tensor(normalize(image))[None].to(device)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = sliding_window_inference(x, roi_size=schedule.roi, sw_batch_size=schedule.sw_batch_size,
                                              predictor=net, overlap=schedule.overlap)
        regions = (torch.sigmoid(logits.float())[0] > schedule.threshold).cpu().numpy()
        out[cid] = out_dir / f"{cid}.nii.gz"
        save_nifti(out[cid], regions_to_labels(regions, scheme), affine, dtype=np.uint8)
    log.info("SegResNet predicted %d cases in %.1f s -> %s", len(out), time.perf_counter() - t0, out_dir)
    return out
