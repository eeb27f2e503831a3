"""The masks dataset of mask source ``ldm``: new label maps sampled from the label model, on real cases' grids.

The label model (``training``) learns the TRAIN split of the source dataset only; its folder is
``<workspace>/models/labelldm-<key>`` with ``key`` a digest of its settings and its training cases, so a
finished model of the same settings and cases is reused. Mask ``k`` of train case ``c`` is sampled from
seed ``mask_seed(seed, c, k)`` (as augment seeds its masks) and written on ``c``'s grid (its affine and
shape: the class map is put back through the inverse of ``c``'s crop/pad, and resampled nearest when the
model grid has another spacing), so ``c`` is its ``source_case`` and ``host_case``.

Each generated mask is a new head and tumour: head = the head class with its holes filled, tumour =
the tumour classes; with ``cleanup_fragments`` tumour components smaller than ``checks.min_fragment_mm3``
are removed first (to head where they lie inside it). Then ``check_mask`` decides, against a reference
built from the real train masks (the labels most of them have, their largest count of stray fragments
and exposure, no volume-ratio bound: a new mask has no source tumour to be compared with; the host's head
faces). A failing mask is quarantined with its reasons; the pass rate is the fraction of ok masks.

Layout (the ``augment`` contract, so every synthesizer reads it): ``cases/<id>/<id>-seg.nii.gz`` and
``-head.nii.gz``; ``source/<case>/`` seg (linked) + head of the train cases and ``source_features.parquet``;
``manifest.parquet`` / ``dataset.json`` (``generation``: pass rate, rejections; ``realism``: distances to
the held-out test masks, ``realism.py``); ``test_features.parquet``: the test masks' features it compared with.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field, field_validator
from scipy import ndimage as ndi

from components.config_base import FrozenModel
from components.io import atomic_dir, atomic_path, link_or_copy, sha256_file, write_case_volumes
from components.labelldm.config import LabelLdmConfig, LabelLdmError, check_profile, load_profile
from components.masks import (
    CHECK_REASONS,
    SOURCE_FEATURES,
    CheckConfig,
    MaskAugmentConfig,
    MaskReference,
    check_mask,
    feature_columns,
    mask_features,
    mask_reference,
    mask_seed,
    nested_pairs,
)
from components.progress import tqdm
from data_catalog import (
    STATUS_OK,
    Dataset,
    dataset_dir,
    dataset_parent_entry,
    has_file,
    open_dataset,
    quarantine_row,
    register_dataset,
    remove_stale_cases,
)

log = logging.getLogger(__name__)

SOURCE_DIR = "source"
TEST_FEATURES = "test_features.parquet"
MODEL_PREFIX = "labelldm-"
# A failed mask's columns after case_id, split, source_case and seed: augment's order (a manifest's columns
# follow its first row).
_FAILED_COLUMNS = ("status", "seg", "head", "sha256_seg", "sha256_head", "host_case", "draws", "params", "labels",
                   "reason")


class LdmMasksConfig(FrozenModel):
    """Settings of one ``ldm`` masks dataset (saved in its dataset.json)."""

    backend: Literal["ldm"] = "ldm"
    profile: str = Field("cpu-demo", description="label model profile: configs/labelldm/<name>.yaml or a YAML path")
    per_case: int = Field(2, ge=1, le=10_000, description="generated masks per train case (written on its grid)")
    seed: int = Field(0, ge=0, description="seed of the samples (the model's own seed is the profile's)")
    max_draws: int = Field(1, ge=1, le=100, description="label maps drawn per requested mask, each from its own "
                           "recorded seed, until one passes the checks (as augment's candidates); the pass rate "
                           "counts every draw")
    device: Literal["auto", "cpu", "cuda"] | None = Field(None, description="None: the profile's device")
    checks: CheckConfig = CheckConfig()
    cleanup_fragments: bool = Field(True, description="remove tumour components smaller than "
                                    "checks.min_fragment_mm3 before the checks")
    montage_cases: int = Field(4, ge=1, le=16)
    realism_max_masks: int = Field(64, ge=2, description="at most this many masks per set enter the realism scores")
    fid: bool = Field(True, description="FID on label-map slices (needs the FID Inception weights)")

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, v: str) -> str:
        check_profile(v)
        return v

    @classmethod
    def coerce(cls, config: BaseModel | None) -> LdmMasksConfig:
        """This config from itself, from a ``MaskAugmentConfig`` (its per_case, seed, checks, max_draws and montage_cases;
        the ldm source always generates for the train split only) or from a model with the same fields."""
        if config is None:
            return cls()
        if isinstance(config, cls):
            return config
        if isinstance(config, MaskAugmentConfig):
            if "test" in config.splits:
                log.info("mask source ldm: generates for the train split only (the config asks for %s)",
                         list(config.splits))
            return cls(per_case=config.per_case, seed=config.seed, checks=config.checks,
                       montage_cases=config.montage_cases, max_draws=min(config.max_draws, 100))
        try:
            return cls.model_validate(config.model_dump())
        except ValueError as err:
            raise LabelLdmError(f"mask source ldm: a config of type {type(config).__name__} does not fit its settings "
                                f"(profile, per_case, seed, checks, ...): {err}") from err

    def model_config_for(self) -> LabelLdmConfig:
        cfg = load_profile(self.profile)
        return cfg if self.device is None else cfg.model_copy(update={"device": self.device})


@dataclass
class LdmMasksSummary:
    name: str
    source: str
    model: str
    n_sources: int
    n_requested: int
    n_ok: int
    n_failed: int
    pass_rate: float
    rejections: dict[str, int]
    n_draws: int
    request_ok_rate: float
    realism: dict[str, float]
    seconds: float
    train_seconds: float
    model_reused: bool
    path: str
    splits: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        return (f"{self.name}: {self.n_ok}/{self.n_requested} label-model masks on {self.n_sources} {self.source} train "
                f"cases, plausibility pass rate {self.pass_rate:.1%} of {self.n_draws} draws, {self.seconds:.1f} s "
                f"({'model reused' if self.model_reused else f'model trained in {self.train_seconds:.0f} s'}) -> {self.path}")

    def report(self) -> str:
        """Multi-line text: pass rate, rejections per check reason, the realism scores beside their floors."""
        lines = [self.line(), f"  masks requested: {self.n_requested}, served: {self.n_ok} ({self.request_ok_rate:.1%}), "
                              f"quarantined: {self.n_failed}; label maps drawn: {self.n_draws}, plausible: "
                              f"{self.pass_rate:.1%}"]
        for r in CHECK_REASONS:
            lines.append(f"  {r:<20} rejected {self.rejections.get(r, 0):>4}")
        m = self.realism
        if m:
            lines.append(f"  realism (n = {int(m.get('mask_realism_n', 0))} vs {int(m.get('mask_realism_n_test', 0))} "
                         f"test masks; generated | floor: real train vs real test):")
            lines.append(f"    FID on label maps: {m.get('mask_fid', math.nan):.2f} | {m.get('mask_fid_floor', math.nan):.2f}")
            for k in sorted(m):
                if k.startswith("mask_wdist_") and not k.endswith("_floor") and k.endswith("_wt"):
                    lines.append(f"    {k[len('mask_wdist_'):]:<22} {m[k]:10.3g} | {m.get(k + '_floor', math.nan):10.3g}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- helpers
def model_key(cfg: LabelLdmConfig, source: Dataset, rows: pd.DataFrame) -> str:
    """What the label model depends on: its settings and exactly which train cases (ids and file digests)."""
    from components.synthesis.data import case_fingerprint

    cases = sorted((str(r["case_id"]), case_fingerprint(r, cfg.data, source.label_scheme)) for _, r in rows.iterrows())
    blob = json.dumps({"config": cfg.stage_digest("diffusion"), "scheme": source.label_scheme.name, "cases": cases},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def population_reference(refs: list[MaskReference], regions: dict[str, tuple[int, ...]], checks: CheckConfig,
                         spacing: tuple[float, float, float], head_faces: tuple[bool, ...]) -> MaskReference:
    """What a new mask is checked against: the labels most real train masks have, their largest count of stray
    fragments and exposure per nested pair, no source volumes (no ratio bound), the host's spacing and head faces."""
    counts = Counter(v for r in refs for v in r.labels)
    labels = tuple(sorted(v for v, n in counts.items() if n * 2 >= len(refs)))
    return MaskReference(
        labels=labels, regions=dict(regions), spacing=spacing, volumes_mm3={},
        fragments={r: max((ref.fragments.get(r, 0) for ref in refs), default=0) for r in regions},
        exposure={f"{i}<{o}": max((ref.exposure.get(f"{i}<{o}", 0.0) for ref in refs), default=0.0)
                  for i, o in nested_pairs(regions)},
        head_faces=head_faces)


def shape_mask(classes: np.ndarray, scheme: Any, spacing: tuple[float, float, float], cleanup_mm3: float | None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """A generated class map (X, Y, Z) -> (seg, head to check against, head to write, tumour voxels removed).

    The head is the head class with its holes filled (so a tumour inside it counts as inside, one that pokes
    out does not); the written head also holds the tumour (the masks contract)."""
    from components.labelldm.data import classes_to_seg

    seg, _ = classes_to_seg(classes, scheme)
    body = ndi.binary_fill_holes(classes == 1)
    removed = 0
    if cleanup_mm3 is not None and cleanup_mm3 > 0 and (seg > 0).any():
        lab, n = ndi.label(seg > 0, structure=np.ones((3, 3, 3), bool))
        sizes = np.bincount(lab.ravel())
        small = np.flatnonzero(sizes * float(np.prod(spacing)) < cleanup_mm3)
        small = small[small > 0]
        if small.size:
            drop = np.isin(lab, small)
            removed = int(drop.sum())
            seg[drop] = 0  # a fragment inside the head is head already (body is filled)
    return seg, body, body | (seg > 0), removed


def _write_case(folder: Path, cid: str, arrays: dict[str, np.ndarray], affine: np.ndarray,
                links: dict[str, Path] | None = None) -> dict[str, str]:
    with atomic_dir(folder / cid) as tmp:
        out = write_case_volumes(tmp, cid, {k: (a, np.uint8) for k, a in arrays.items()}, affine)
        for key, src in (links or {}).items():
            f = tmp / f"{cid}-{key}.nii.gz"
            link_or_copy(src, f)
            out[key] = f.name
            out[f"sha256_{key}"] = sha256_file(f)
    return out


def mask_id(case_id: str, k: int) -> str:
    return f"{case_id}-ldm{k:03d}"


def draw_seed(seed: int, case_id: str, k: int, draw: int) -> int:
    """Seed of draw ``draw`` of mask ``k`` on case ``case_id``: the first is augment's mask seed, redraws their own."""
    return mask_seed(seed, case_id if draw == 0 else f"{case_id}:draw{draw}", k)


# --------------------------------------------------------------------------- the dataset
def make_ldm_masks(workspace: str | Path, source: str, name: str, config: BaseModel | None = None,
                   progress: bool | None = None) -> LdmMasksSummary:
    """Write and register the masks dataset ``name`` of label-model masks learnt from ``source``'s train split."""
    from components.labelldm.data import n_classes, prepare_dataset_cases, to_source_grid
    from components.labelldm.realism import label_map_features
    from components.labelldm.sampling import sample_label_maps
    from components.labelldm.store import load_label_model
    from components.labelldm.training import train_label_model
    from components.synthesis.data import fit_case, load_case, spacing_of

    t0 = time.perf_counter()
    cfg = LdmMasksConfig.coerce(config)
    mcfg = cfg.model_config_for()
    if name == source:
        raise LabelLdmError(f"the masks dataset needs its own name; --name {name!r} is the source dataset")
    src = open_dataset(workspace, source)
    scheme = src.label_scheme
    regions = {k: tuple(v) for k, v in scheme.regions.items()}
    ok = src.ok_cases()
    labelled = ok[[has_file(r, "seg") for r in ok.to_dict("records")]] if len(ok) else ok
    train = labelled[labelled["split"] == "train"].sort_values("case_id").reset_index(drop=True)
    test = labelled[labelled["split"] == "test"].sort_values("case_id").reset_index(drop=True)
    if train.empty:
        raise LabelLdmError(f"dataset {source!r} ({src.root / 'manifest.parquet'}) has no ok train-split case with a "
                            f"seg; the label model learns the train split's masks only")
    progress_off = None if progress is None else not progress

    # ---- the label model: reused when one of these settings and these train cases is finished
    key = model_key(mcfg, src, train)
    model_name = f"{MODEL_PREFIX}{key[:16]}"
    root = Path(workspace) / "models" / model_name
    cases = prepare_dataset_cases(src, train, mcfg.data, scheme, root / "prepared", with_images=False, progress=progress)
    lost = [(c, i["lost_tumour_voxels"]) for c, i in zip(cases.case_ids, cases.infos, strict=True) if i["lost_tumour_voxels"]]
    if lost:
        raise LabelLdmError(f"dataset {source!r}: the model grid data.shape {list(mcfg.data.shape)} of profile "
                            f"{mcfg.profile!r} cuts the tumour of {len(lost)} train cases (e.g. {lost[0][0]} loses "
                            f"{lost[0][1]} voxels); choose a profile with a larger grid or a coarser spacing")
    trained = train_label_model(root, cases, mcfg, scheme, card_extra={
        "dataset": source, "dataset_manifest_sha256": src.manifest_digest, "model_key": key,
        "purpose": "mask source ldm: unconditional label maps"}, progress=progress)
    model = load_label_model(root)
    classes_n = n_classes(scheme)

    # ---- the real train masks: heads, source files, features, the check reference
    out = dataset_dir(workspace, name)
    out.mkdir(parents=True, exist_ok=True)
    hosts: dict[str, dict[str, Any]] = {}
    src_rows, refs = [], []
    fid_train: list[np.ndarray | None] = []
    fid_pick = set(_pick(len(train), cfg.realism_max_masks, cfg.seed, "train").tolist())
    for i, (_, row) in enumerate(tqdm(list(train.iterrows()), desc=f"real masks {source}", unit="case",
                                   disable=progress_off)):
        cid = str(row["case_id"])
        c = load_case(src, row, with_images=False)
        spacing = spacing_of(c["affine"])
        seg, head = c["seg"], c["head"]
        written = _write_case(out / SOURCE_DIR, cid, {"head": head.astype(np.uint8)}, c["affine"],
                              links={"seg": src.path(cid, "seg")})
        refs.append(mask_reference(seg, head, regions, spacing, cfg.checks))
        fc = fit_case(None, seg, head, c["affine"], mcfg.data)
        hosts[cid] = {"fc": fc, "affine": c["affine"], "shape": seg.shape, "spacing": spacing,
                      "head_faces": refs[-1].head_faces}
        r = {"case_id": cid, "split": "train", "seg": f"{SOURCE_DIR}/{cid}/{written['seg']}",
             "head": f"{SOURCE_DIR}/{cid}/{written['head']}", "sha256_seg": written["sha256_seg"],
             "sha256_head": written["sha256_head"], "shape": [int(s) for s in seg.shape],
             "spacing": [float(s) for s in spacing], "labels": [int(v) for v in np.unique(seg)],
             "head_volume_mm3": float(head.sum()) * float(np.prod(spacing))}
        r.update(mask_features(seg, regions, spacing))
        src_rows.append(r)
        if cfg.fid and i in fid_pick:
            fid_train.append(label_map_features(_classes_of(seg, head, scheme), spacing, classes_n))
    _remove_stale(out / SOURCE_DIR, set(hosts))
    src_df = pd.DataFrame(src_rows)
    with atomic_path(out / SOURCE_FEATURES, suffix=".parquet") as tmp:
        src_df.to_parquet(tmp, index=False)

    # ---- sample, put each mask on its host's grid, check, write; a failing request is drawn again
    for h in hosts.values():  # what a new mask on that host is checked against: once per host, not per draw
        h["ref"] = population_reference(refs, regions, cfg.checks, h["spacing"], h["head_faces"])
    requests = [(cid, k) for cid in hosts for k in range(cfg.per_case)]
    done: dict[tuple[str, int], tuple[dict[str, Any], np.ndarray | None]] = {}
    rejections: Counter = Counter()
    removed_total = n_draws = n_draws_ok = 0
    s = mcfg.sample
    bar = tqdm(total=len(requests), desc=f"masks {name}", unit="mask", disable=progress_off)
    pending = list(requests)
    for draw in range(cfg.max_draws):
        failing = []
        for start in range(0, len(pending), s.batch):
            part = pending[start:start + s.batch]
            seeds = [draw_seed(cfg.seed, cid, k, draw) for cid, k in part]
            maps = sample_label_maps(model, seeds, s.steps, s.eta, len(part))
            for (cid, k), seed, cmap in zip(part, seeds, maps, strict=True):
                h = hosts[cid]
                mid = mask_id(cid, k)
                back = to_source_grid(cmap[None].astype(np.float32), h["fc"], h["affine"], h["shape"], mode="nearest")[0]
                classes = np.rint(back).astype(np.uint8)
                seg, check_head, head, removed = shape_mask(
                    classes, scheme, h["spacing"], cfg.checks.min_fragment_mm3 if cfg.cleanup_fragments else None)
                removed_total += removed
                n_draws += 1
                reasons = _check(seg, check_head, h["ref"], cfg.checks, regions, h["spacing"])
                params = json.dumps({"backend": "ldm", "model": model_name, "model_digest": model.digest, "seed": seed,
                                     "draw": draw, "sampler": "ddim", "steps": s.steps, "eta": s.eta, "host_case": cid,
                                     "fragments_removed_voxels": removed}, sort_keys=True)
                row: dict[str, Any] = {"case_id": mid, "split": "train", "source_case": cid, "seed": seed,
                                       "shape": [int(v) for v in h["shape"]], "spacing": [float(v) for v in h["spacing"]]}
                labels = [int(v) for v in np.flatnonzero(np.bincount(seg.ravel()))]
                if reasons:
                    rejections.update(reasons)
                    if draw + 1 < cfg.max_draws:
                        failing.append((cid, k))
                        continue
                    failed = quarantine_row(
                        mid, f"generated mask {k} on the grid of train case {cid}: none of {cfg.max_draws} draws passed "
                             f"the plausibility checks (last: {', '.join(reasons)}); expected one (see "
                             f"components.masks.checks)",
                        "train", file_keys=("seg", "head"), host_case=cid, draws=draw + 1, params=params, labels=labels)
                    row.update((c, failed[c]) for c in _FAILED_COLUMNS)
                    done[(cid, k)] = (row, None)
                else:
                    n_draws_ok += 1
                    written = _write_case(out / "cases", mid, {"seg": seg, "head": head.astype(np.uint8)}, h["affine"])
                    row.update(status=STATUS_OK, reason="", seg=f"cases/{mid}/{written['seg']}",
                               head=f"cases/{mid}/{written['head']}", sha256_seg=written["sha256_seg"],
                               sha256_head=written["sha256_head"], host_case=cid, draws=draw + 1, params=params,
                               labels=labels)
                    row.update(mask_features(seg, regions, h["spacing"]))
                    done[(cid, k)] = (row, label_map_features(_classes_of(seg, head, scheme), h["spacing"], classes_n)
                                      if cfg.fid else None)
                bar.update(1)
        pending = failing
    bar.close()
    rows = [done[r][0] for r in requests]
    fid_gen = [done[r][1] for r in requests if done[r][0]["status"] == STATUS_OK]
    manifest = pd.DataFrame(rows)
    manifest["seed"] = manifest["seed"].astype("int64")
    for col in feature_columns(list(regions)):
        if col not in manifest:
            manifest[col] = np.nan
    remove_stale_cases(out, set(manifest.loc[manifest["status"] == STATUS_OK, "case_id"]))
    n_ok = int((manifest["status"] == STATUS_OK).sum())
    pass_rate = n_draws_ok / n_draws  # over every draw: redrawing a failing request does not flatter it

    # ---- realism against the held-out real test masks (features only: no test file enters the dataset)
    realism = _realism(src, test, manifest, src_df.iloc[sorted(fid_pick)].reset_index(drop=True), fid_gen, fid_train,
                       regions, classes_n, cfg, out, progress_off)
    summary = LdmMasksSummary(
        name=name, source=source, model=model_name, n_sources=len(hosts), n_requested=len(requests), n_ok=n_ok,
        n_failed=len(requests) - n_ok, pass_rate=pass_rate,
        rejections={r: int(rejections.get(r, 0)) for r in CHECK_REASONS}, n_draws=n_draws,
        request_ok_rate=n_ok / len(requests), realism=realism["metrics"],
        seconds=0.0, train_seconds=trained.train_seconds, model_reused=not trained.trained, path=str(out),
        splits={"train": n_ok})
    summary.seconds = time.perf_counter() - t0
    card = model.card
    register_dataset(
        workspace, name, kind="masks", label_scheme=src.info["label_scheme"], manifest=manifest,
        config=cfg.model_dump(mode="json"), parents=[dataset_parent_entry(src)],
        extra={
            "modalities": [], "source": source, "mask_source": "ldm",
            "generation": {**asdict(summary), "fragments_removed_voxels": removed_total,
                           "pass_rate_definition": "plausible label maps / label maps drawn (every draw of every "
                                                     "request); request_ok_rate: requests served within max_draws"},
            "label_model": {"name": model_name, "path": str(root), "digest": model.digest,
                            "profile": mcfg.profile, "train_cases": card["train_cases"], "dataset": source,
                            "scale_factor": model.scale_factor, "stages": card["stages"]},
            "realism": realism, "source_features": SOURCE_FEATURES, "test_features": TEST_FEATURES,
            "feature_naming": "<feature>_<region lower case>; see components/masks/features.py",
            "check_reasons": list(CHECK_REASONS),
        },
    )
    log.info(summary.line())
    return summary


def _classes_of(seg: np.ndarray, head: np.ndarray, scheme: Any) -> np.ndarray:
    from components.synthesis.data import condition_labels

    return condition_labels(seg, head, scheme)


def _check(seg: np.ndarray, head: np.ndarray, ref: MaskReference, checks: CheckConfig,
           regions: dict[str, tuple[int, ...]], spacing: tuple[float, float, float]) -> list[str]:
    reasons = check_mask(seg, head, ref, checks)
    if not ref.labels:  # no label most real masks share: check_mask applies no absolute bound, do it here
        wt = float((seg > 0).sum()) * float(np.prod(spacing))
        if wt == 0 and "label_lost" not in reasons:
            reasons.append("label_lost")
        if not checks.volume_mm3_wt[0] <= wt <= checks.volume_mm3_wt[1] and "volume_bounds" not in reasons:
            reasons.append("volume_bounds")
    return [r for r in CHECK_REASONS if r in reasons]


def _pick(n: int, cap: int, seed: int, what: str) -> np.ndarray:
    """A seeded subset of at most ``cap`` of ``n`` items (sorted indices): the masks that enter the realism scores."""
    from components.seeds import derive_rng

    return np.sort(derive_rng(seed, "realism", what).permutation(n)[:cap]) if n > cap else np.arange(n)


def _realism(src: Dataset, test: pd.DataFrame, manifest: pd.DataFrame, train_df: pd.DataFrame,
             fid_gen: list[np.ndarray | None], fid_train: list[np.ndarray | None], regions: dict[str, tuple[int, ...]],
             classes_n: int, cfg: LdmMasksConfig, out: Path, progress_off: bool | None) -> dict[str, Any]:
    """Realism of the ok generated masks against the test masks (features and FID), floors from the train masks."""
    from components.labelldm.realism import label_map_features, mask_realism
    from components.synthesis.data import load_case, spacing_of

    test_rows, test_fid = [], []
    pick = test.iloc[_pick(len(test), cfg.realism_max_masks, cfg.seed, "test")]
    for _, row in tqdm(list(pick.iterrows()), desc=f"test masks {src.name}", unit="case", disable=progress_off):
        c = load_case(src, row, with_images=False)
        spacing = spacing_of(c["affine"])
        test_rows.append({"case_id": str(row["case_id"]), "split": "test", **mask_features(c["seg"], regions, spacing)})
        if cfg.fid:
            test_fid.append(label_map_features(_classes_of(c["seg"], c["head"], src.label_scheme), spacing, classes_n))
    test_df = pd.DataFrame(test_rows, columns=["case_id", "split", *feature_columns(list(regions))])
    with atomic_path(out / TEST_FEATURES, suffix=".parquet") as tmp:
        test_df.to_parquet(tmp, index=False)
    gen = manifest[manifest["status"] == STATUS_OK].reset_index(drop=True)
    keep = _pick(len(gen), cfg.realism_max_masks, cfg.seed, "generated")
    return mask_realism(gen.iloc[keep].reset_index(drop=True), train_df, test_df, list(regions), seed=cfg.seed,
                        fid_features=([fid_gen[i] for i in keep], fid_train, test_fid) if cfg.fid else None)


def _remove_stale(folder: Path, keep: set[str]) -> None:
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name not in keep:
                shutil.rmtree(p, ignore_errors=True)


# --------------------------------------------------------------------------- what the pipeline logs
def mask_realism_metrics(workspace: str | Path, name: str) -> dict[str, float]:
    """Flat metrics of an ``ldm`` masks dataset for MLflow: ``mask_pass_rate`` (over every draw),
    ``mask_request_ok_rate`` (requests served within max_draws), ``mask_fid`` /
    ``mask_fid_floor``, ``mask_wdist_<feature>`` / ``..._floor``, ``mask_realism_n`` (LabelLdmError for a
    dataset the ldm mask source did not write)."""
    ds = open_dataset(workspace, name)
    if ds.info.get("mask_source") != "ldm" or "generation" not in ds.info:
        raise LabelLdmError(f"dataset {name!r} ({ds.root / 'dataset.json'}) was not written by mask source ldm: "
                            f"expected 'mask_source': 'ldm' and a 'generation' block, found mask_source "
                            f"{ds.info.get('mask_source')!r}")
    gen = ds.info["generation"]
    out = {"mask_pass_rate": float(gen["pass_rate"])}
    if "request_ok_rate" in gen:
        out["mask_request_ok_rate"] = float(gen["request_ok_rate"])
    out.update({k: float(v) for k, v in ds.info.get("realism", {}).get("metrics", {}).items()})
    return out


__all__ = ["LdmMasksConfig", "LdmMasksSummary", "make_ldm_masks", "mask_realism_metrics", "model_key",
           "population_reference", "shape_mask"]
