"""The ratio ablation: real+synthetic mixes, a segmenter (nnU-Net by default) per mix, scores on
held-out real cases only.

A mix = real train cases (optionally a seeded subset: the data-scarce case) + synthetic cases at
ratio r (synthetic per real), optionally only the highest-quality ones, optionally without the
real cases. The test set is the real dataset's fixed test split. Leakage is checked, not assumed:
:func:`check_no_leak` refuses any training case that is, or derives from, a test case.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from components.backends import DEFAULT_SEGMENTER
from components.config_base import FrozenModel
from components.errors import InputError
from components.export import ExportCase, cases_from_dataset, export_nnunet, reserve_dataset_ids
from components.io import atomic_path, write_json_atomic
from components.segmentation.nnunet import NnunetSchedule, ScheduleName, default_schedule
from components.synthetic_sets import SYNTHESIZER_COLUMN
from data_catalog import Dataset

log = logging.getLogger(__name__)


class AblationError(InputError):
    """An ablation grid or data set that makes no sense; raised before anything trains."""


class LeakError(AblationError):
    """A training set holds a test case or something derived from one, or a generator learnt from one."""


class AblationConfig(FrozenModel):
    """One ablation: the grid of configurations and how each is trained and scored."""

    ratios: tuple[float, ...] = Field((0.0, 0.5, 1.0, 2.0), min_length=1,
                                      description="synthetic cases per real training case; must include 0 "
                                                  "(the real-only baseline every effect is paired against)")
    seeds: tuple[int, ...] = Field((0,), min_length=1, description="one configuration per ratio and seed")
    synthetic_only: bool = Field(False, description="add synthetic-only configurations (no real case)")
    real_fraction: float = Field(1.0, gt=0.0, le=1.0, description="fraction of the real training cases kept "
                                 "(the data-scarce case): one subset, drawn with subset_seed, for every seed")
    subset_seed: int = Field(0, ge=0, description="seed of the real subset drawn when real_fraction < 1")
    high_quality: bool = Field(False, description="take synthetic cases by descending quality_score, not at random")
    schedule: ScheduleName | None = Field(None, description="nnU-Net schedule (components.segmentation.nnunet); "
                                          "None: full where a CUDA GPU is visible, cpu-demo without one")
    preset: Literal["brats2023", "brats2024", "brats2025"] = Field("brats2023", description="lesion-wise scoring preset")
    experiment: str = "gliosynth-ablation"
    montage_cases: int = Field(2, ge=0)
    bootstrap_resamples: int = Field(9999, ge=100, description="resamples of the paired-effect bootstrap")

    def with_schedule(self) -> AblationConfig:
        """This config with its schedule resolved for this machine (what runs is what is recorded)."""
        return self if self.schedule is not None else self.model_copy(update={"schedule": default_schedule()})

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        bad = [r for r in v if not math.isfinite(r) or r < 0]
        if bad:
            raise ValueError(f"ratios must be finite numbers >= 0 (synthetic cases per real case); got {list(bad)}")
        if len(set(v)) != len(v):
            raise ValueError(f"ratios repeat: {list(v)}")
        if 0.0 not in v:
            raise ValueError(f"ratios must include 0, the real-only baseline each ratio is compared with; got {list(v)}")
        return tuple(sorted(float(r) for r in v))

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(s < 0 for s in v) or len(set(v)) != len(v):
            raise ValueError(f"seeds must be distinct integers >= 0; got {list(v)}")
        return v


@dataclass(frozen=True)
class MixPlan:
    """Which cases one configuration trains on and tests on (ids only: cheap to hash and cache), and
    the segmenter (``components.backends``) that trains on them.

    ``real_pool`` is the real subset the configuration stands for: its real training cases, and
    the only real cases its synthetic cases (and their generator) may derive from.
    """

    name: str
    ratio: float
    seed: int
    synthetic_only: bool
    real_ids: tuple[str, ...]
    synthetic_ids: tuple[str, ...]
    test_ids: tuple[str, ...]
    requested_synthetic: int
    real_pool: tuple[str, ...] = ()
    segmenter: str = DEFAULT_SEGMENTER
    synthesizer: str = ""  # the synthesizer of its synthetic cases when several were crossed; "" otherwise

    @property
    def n_real(self) -> int:
        return len(self.real_ids)

    @property
    def n_synthetic(self) -> int:
        return len(self.synthetic_ids)

    @property
    def train_ids(self) -> tuple[str, ...]:
        return tuple(sorted((*self.real_ids, *self.synthetic_ids)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MixPlan:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _labelled(ds: Dataset, split: str) -> pd.DataFrame:
    m = ds.ok_cases(split)
    return m[m["seg"].astype(str) != ""].sort_values("case_id").reset_index(drop=True)


def _config_name(ratio: float, seed: int, synthetic_only: bool) -> str:
    r = f"{ratio:g}".replace(".", "p")
    return f"{'synonly-' if synthetic_only else ''}r{r}-s{seed}"


def real_subset(real: Dataset, cfg: AblationConfig) -> tuple[str, ...]:
    """The real training cases every configuration of the ablation draws from (seeded by subset_seed)."""
    real_train = _labelled(real, "train")["case_id"].tolist()
    if not real_train:
        raise AblationError(f"dataset {real.name!r} has no labelled train-split case ({real.root / 'manifest.parquet'})")
    if cfg.real_fraction >= 1.0:
        return tuple(real_train)
    n_keep = max(1, round(cfg.real_fraction * len(real_train)))
    return tuple(sorted(np.random.default_rng(cfg.subset_seed).permutation(real_train)[:n_keep].tolist()))


def make_real_subset(workspace: str | Path, real: Dataset, fraction: float, subset_seed: int, name: str) -> Dataset:
    """A data-scarce arm's real dataset: the seeded subset of ``real``'s train split, its whole test split.

    Files are hard-linked (or copied) byte for byte. Everything trained for the arm (masks,
    generator, segmenter) then sees the subset only, and its ablation scores on the same test cases.
    """
    from components.io import link_or_copy
    from data_catalog import MODALITIES, dataset_dir, dataset_parent_entry, file_of, register_dataset

    pool = set(real_subset(real, AblationConfig(real_fraction=fraction, subset_seed=subset_seed)))
    rows = real.manifest[(real.manifest["status"] == "ok")
                         & (real.manifest["case_id"].isin(pool) | (real.manifest["split"] == "test"))]
    root = dataset_dir(workspace, name)
    for _, r in rows.iterrows():
        for key in (*MODALITIES, "seg"):
            rel = file_of(r, key)
            if rel is not None:
                link_or_copy(real.root / rel, root / rel)
    info = {k: v for k, v in real.info.items() if k in ("note", "template_license", "source_scheme", "mapping")}
    return register_dataset(
        workspace, name, kind=str(real.info.get("kind", "real")), label_scheme=real.label_scheme.name,
        manifest=rows.reset_index(drop=True), config={"fraction": fraction, "subset_seed": subset_seed},
        parents=[dataset_parent_entry(real)],
        extra={**info, "subset_of": real.name, "subset_fraction": fraction, "subset_seed": subset_seed,
               "n_train_subset": len(pool)},
    )


def plan_mixes(real: Dataset, synthetic: Dataset | None, cfg: AblationConfig,
               segmenters: Sequence[str] = (DEFAULT_SEGMENTER,)) -> list[MixPlan]:
    """All configurations of the ablation. Selection is seeded and nested across ratios.

    Every mix is crossed with every segmenter; with one segmenter a configuration is named after
    its mix alone (``r1-s0``), with more after both (``nnunet-r1-s0``). A combined synthetic dataset
    (``components.synthetic_sets``) crosses its synthesizers too: each ratio above 0 once per
    synthesizer (``ldm-r1-s0``, cases of that synthesizer only), the real-only baseline once for all.

    For one seed the synthetic cases are taken from one fixed permutation, so the cases of ratio
    0.5 are a subset of those of ratio 1: differences between ratios are not re-draws. Every
    variant (real + synthetic, synthetic only) takes synthetic cases derived from the real subset
    only, so a data-scarce mix stays data-scarce. A grid the data cannot fill fails here, with one
    sentence, before anything trains.
    """
    test_ids = tuple(_labelled(real, "test")["case_id"].tolist())
    if not test_ids:
        raise AblationError(f"dataset {real.name!r} has no labelled test-split case to score on "
                            f"({real.root / 'manifest.parquet'})")
    pool = real_subset(real, cfg)
    if any(r > 0 for r in cfg.ratios) and synthetic is None:
        raise AblationError(f"ratios {[r for r in cfg.ratios if r > 0]} need a synthetic dataset; none was given")
    eligible = pd.DataFrame(columns=["case_id", "source_case", SYNTHESIZER_COLUMN])
    if synthetic is not None and any(r > 0 for r in cfg.ratios):
        syn = _labelled(synthetic, "train")
        src = syn["source_case"].astype(str) if "source_case" in syn else pd.Series([""] * len(syn), dtype=str)
        linked = syn[src.isin(set(real.manifest["case_id"]))]
        if linked.empty:
            seen = sorted(set(src))[:3]
            raise AblationError(
                f"synthetic dataset {synthetic.name!r} ({synthetic.root / 'manifest.parquet'}): expected train-split "
                f"cases whose source_case is a case of the real dataset {real.name!r}, found none (source_case "
                f"values: {seen or 'none'}); without that link no synthetic case can be checked against the test split")
        eligible = linked[linked["source_case"].astype(str).isin(set(pool))]
    arms = synthesizer_arms(synthetic)
    plans = []
    for seed in cfg.seeds:
        for ratio, syn_only in [(r, False) for r in cfg.ratios] + (
                [(r, True) for r in cfg.ratios if r > 0] if cfg.synthetic_only else []):
            for arm in (arms if ratio > 0 else [""]):  # the real-only baseline is shared by every synthesizer
                part = eligible[eligible[SYNTHESIZER_COLUMN].astype(str) == arm] if arm else eligible
                if cfg.high_quality and ratio > 0 and (
                        "quality_score" not in part or part["quality_score"].astype(float).isna().any()):
                    unscored = part["case_id"].tolist() if "quality_score" not in part else part.loc[
                        part["quality_score"].astype(float).isna(), "case_id"].tolist()
                    raise AblationError(
                        f"high_quality: synthetic dataset {synthetic.name if synthetic is not None else '-'!r}"
                        f"{f' (synthesizer {arm})' if arm else ''}: expected a finite quality_score for every "
                        f"eligible case, found none for {len(unscored)} (e.g. {unscored[:3]}); drop high_quality "
                        f"or score the cases")
                candidates = _candidates(part, seed, cfg.high_quality)
                want = math.floor(ratio * len(pool) + 0.5)  # half up, not Python's half-to-even
                if ratio > 0 and want == 0:
                    raise AblationError(f"ratio {ratio:g} x {len(pool)} real training cases rounds to 0 synthetic "
                                        f"cases: use a ratio of at least {0.5 / len(pool):.2g}")
                if want > len(candidates):
                    what = f"synthetic dataset {synthetic.name if synthetic is not None else '-'!r}" + (
                        f" (synthesizer {arm})" if arm else "")
                    raise AblationError(
                        f"ratio {ratio:g} needs {want} synthetic cases ({ratio:g} x {len(pool)} real training cases) "
                        f"but {what} has {len(candidates)} eligible (ok, train split, derived from the "
                        f"configuration's real cases): lower the ratio or synthesise more cases per mask")
                name = _config_name(ratio, seed, syn_only)
                plans.append(MixPlan(
                    name=f"{arm}-{name}" if arm else name, ratio=float(ratio), seed=int(seed), synthetic_only=syn_only,
                    real_ids=() if syn_only else pool, synthetic_ids=tuple(sorted(candidates[:want])),
                    test_ids=test_ids, requested_synthetic=int(want), real_pool=pool, synthesizer=arm,
                ))
    if len(segmenters) == 1:
        return [replace(p, segmenter=segmenters[0]) for p in plans]
    return [replace(p, name=f"{s}-{p.name}", segmenter=s) for s in segmenters for p in plans]


def synthesizer_arms(synthetic: Dataset | None) -> list[str]:
    """The synthesizers a combined synthetic dataset (``components.synthetic_sets``) crosses, in its
    order; ``[""]`` for a dataset of one synthesizer (or none)."""
    if synthetic is None or SYNTHESIZER_COLUMN not in synthetic.manifest:
        return [""]
    labels = [str(v) for v in synthetic.info.get("synthesizers", [])] or sorted(
        set(synthetic.manifest[SYNTHESIZER_COLUMN].dropna().astype(str)) - {""})
    return labels if len(labels) > 1 else [""]


def _candidates(eligible: pd.DataFrame, seed: int, high_quality: bool) -> list[str]:
    """The synthetic cases in the order a configuration takes them: one seeded permutation (so the
    cases of a lower ratio are a subset of a higher one's), or by descending quality_score."""
    if high_quality and "quality_score" in eligible:
        # higher quality_score is better; ties broken by id so the order is total
        return eligible.sort_values(["quality_score", "case_id"], ascending=[False, True])["case_id"].tolist()
    return np.random.default_rng([seed, 1]).permutation(eligible["case_id"].tolist()).tolist()


@dataclass(frozen=True)
class GeneratorRecord:
    """Which real cases the generator of a synthetic set learnt from (its model card)."""

    dataset: str
    train_cases: tuple[str, ...]
    source: str


def generator_record(workspace: str | Path, synthetic: Dataset) -> GeneratorRecord | None:
    """The generator's training cases: recorded in the synthetic dataset, else read from its model card."""
    info = synthetic.info
    if info.get("generator_train_cases") is not None:
        return GeneratorRecord(str(info.get("generator_dataset", info.get("model_dataset", ""))),
                               tuple(info["generator_train_cases"]), f"{synthetic.root / 'dataset.json'}")
    model = info.get("model")
    if model:
        from components.synthesis.store import model_paths

        card_path = model_paths(workspace, model).config
        if card_path.is_file():
            card = json.loads(card_path.read_text(encoding="utf-8"))
            if card.get("train_cases") is not None:
                return GeneratorRecord(str(card.get("dataset", "")), tuple(card["train_cases"]), str(card_path))
    return None


def check_generator(plan: MixPlan, real: Dataset, synthetic: Dataset, generator: GeneratorRecord | None) -> None:
    """Refuse a synthetic set whose generator learnt from a test case or from real cases outside the
    configuration's real subset (what it learnt would reach training through its samples)."""
    if generator is None:
        raise LeakError(
            f"configuration {plan.name}: synthetic dataset {synthetic.name!r} ({synthetic.root / 'dataset.json'}) "
            f"does not say which real cases its generator learnt from (expected `generator_train_cases` or a `model` "
            f"with a model card); a generator trained on test cases would leak them, so it is refused")
    allowed = {real.name, str(real.info.get("subset_of", ""))} - {""}
    if generator.dataset not in allowed:
        raise LeakError(
            f"configuration {plan.name}: the generator of synthetic dataset {synthetic.name!r} learnt from dataset "
            f"{generator.dataset!r} ({generator.source}), expected the ablation's real dataset {real.name!r}: its "
            f"training cases cannot be checked against that test split")
    test_seen = sorted(set(generator.train_cases) & set(plan.test_ids))
    if test_seen:
        raise LeakError(
            f"configuration {plan.name}: the generator of synthetic dataset {synthetic.name!r} learnt from test-split "
            f"cases {test_seen[:5]} ({generator.source}); expected train-split cases only")
    outside = sorted(set(generator.train_cases) - set(plan.real_pool))
    if outside:
        raise LeakError(
            f"configuration {plan.name}: the generator of synthetic dataset {synthetic.name!r} learnt from "
            f"{len(outside)} real cases outside the configuration's {len(plan.real_pool)}-case real subset "
            f"(e.g. {outside[:5]}; {generator.source}): train one generator on that subset (the pipeline does this "
            f"for `ablation.real_fractions`) or use real_fraction 1")


def check_no_leak(plan: MixPlan, real: Dataset, synthetic: Dataset | None,
                  generator: GeneratorRecord | None = None) -> None:
    """Raise LeakError if any training case is a test case or derives from one, or if the synthetic
    set's generator learnt from a test case or outside the real subset (checked on the manifests)."""
    rsplit = dict(zip(real.manifest["case_id"], real.manifest["split"], strict=True))
    test = set(plan.test_ids)
    bad = [c for c in plan.real_ids if c in test or rsplit.get(c) != "train"]
    if bad:
        raise LeakError(f"configuration {plan.name}: real training cases {bad[:5]} are not in the train split of "
                        f"dataset {real.name!r} ({real.root / 'manifest.parquet'})")
    outside = sorted(set(plan.real_ids) - set(plan.real_pool)) if plan.real_pool else []
    if outside:
        raise LeakError(f"configuration {plan.name}: real training cases outside its real subset: {outside[:5]}")
    if plan.synthetic_ids:
        if synthetic is None:
            raise LeakError(f"configuration {plan.name}: synthetic cases listed but no synthetic dataset")
        m = synthetic.manifest.set_index("case_id")
        pool = set(plan.real_pool) if plan.real_pool else None
        for c in plan.synthetic_ids:
            if c not in m.index:
                raise LeakError(f"configuration {plan.name}: synthetic case {c} not in dataset {synthetic.name!r}")
            row = m.loc[c]
            src = str(row.get("source_case", ""))
            if row["split"] != "train" or src in test or rsplit.get(src) != "train":
                raise LeakError(
                    f"configuration {plan.name}: synthetic case {c} derives from real case {src!r} "
                    f"(split {rsplit.get(src)!r}, synthetic split {row['split']!r}): expected a train-split source"
                )
            if pool is not None and src not in pool:
                raise LeakError(f"configuration {plan.name}: synthetic case {c} derives from real case {src!r}, "
                                f"outside the configuration's real subset")
        check_generator(plan, real, synthetic, generator)


@dataclass
class ConfigResult:
    name: str
    status: str
    params: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""
    seconds: float = 0.0
    run_id: str = ""
    per_case_csv: str = ""


def sanitize(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", name)


@dataclass(frozen=True)
class NnunetData:
    """The ablation's one nnU-Net dataset: planned on the real cases once, one fold per configuration."""

    dataset_id: int
    folds: dict[str, int]
    root: str


def held_out_cases(plan: MixPlan, real: Dataset) -> list[ExportCase]:
    """The configuration's held-out real test cases with their files."""
    cases = {c.case_id: c for c in cases_from_dataset(real, ("test",))}
    return [cases[c] for c in plan.test_ids]


def _assign_folds(pre: Path, plans: list[MixPlan]) -> dict[str, int]:
    """One ``splits_final.json`` fold per configuration, stable across re-runs.

    A configuration keeps its fold while its training cases are unchanged; a changed one gets a
    new fold, so a trained fold never stands for another case list. nnU-Net's own validation
    inside a fold uses the fold's training cases (as its ``all`` fold does): no case is held out
    of what the configuration says it trains on.
    """
    reg_file = pre / "gliosynth_folds.json"
    entries: list[dict[str, Any]] = json.loads(reg_file.read_text()) if reg_file.is_file() else []
    folds = {}
    for plan in plans:
        train = list(plan.train_ids)
        idx = next((i for i, e in enumerate(entries) if e["name"] == plan.name and e["train"] == train), None)
        if idx is None:
            entries.append({"name": plan.name, "train": train})
            idx = len(entries) - 1
        folds[plan.name] = idx
    write_json_atomic(pre / "splits_final.json", [{"train": e["train"], "val": e["train"]} for e in entries])
    write_json_atomic(reg_file, entries)
    return folds


def prepare_nnunet(workspace: str | Path, ablation: str, plans: list[MixPlan], real: Dataset,
                   synthetic: Dataset | None, schedule: NnunetSchedule) -> NnunetData:
    """Export, plan and preprocess the ablation's cases for nnU-Net once, for every configuration.

    The real training cases are fingerprinted, planned and preprocessed (nnU-Net's integrity check
    included) and the plans are reused by every configuration; the synthetic cases any
    configuration uses are then preprocessed with those plans. Planning sees real cases only, so
    every ratio trains with the same plans. Each configuration is one fold of
    ``splits_final.json`` listing exactly its cases. A re-run with the same real cases skips the
    planning; one with other real cases plans again.
    """
    from components.segmentation.nnunet import plan_and_preprocess, preprocess_cases

    ws = Path(workspace).resolve()
    root = ws / "nnunet"
    raw_root = root / "raw"
    name = sanitize(ablation)
    did = reserve_dataset_ids(raw_root, [name])[name]
    real_ids = sorted({c for p in plans for c in p.real_ids} | {c for p in plans for c in p.real_pool})
    syn_ids = sorted({c for p in plans for c in p.synthetic_ids})
    if set(real_ids) & set(syn_ids):
        raise AblationError(f"case ids {sorted(set(real_ids) & set(syn_ids))[:5]} are in both the real and the "
                            f"synthetic dataset: nnU-Net needs one id per case")
    real_cases = {c.case_id: c for c in cases_from_dataset(real, ("train",))}
    syn_cases = {c.case_id: c for c in cases_from_dataset(synthetic, ("train",))} if synthetic is not None else {}
    pre = root / "preprocessed" / f"Dataset{did:03d}_{name}"
    stamp = {"real_dataset": real.name, "real_manifest_sha256": real.manifest_digest, "real_ids": real_ids,
             "configuration": schedule.configuration}
    stamp_file = pre / "gliosynth_plan.json"
    extra = {"gliosynth_ablation": ablation, "gliosynth_real": real.name}
    planned = stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp
    if not planned:
        t0 = time.perf_counter()
        export_nnunet([real_cases[c] for c in real_ids], raw_root, name, real.label_scheme, did, extra=extra)
        for f in ("gliosynth_folds.json", "splits_final.json"):
            (pre / f).unlink(missing_ok=True)
        shutil.rmtree(root / "results" / pre.name, ignore_errors=True)  # models of the old plans
        plan_and_preprocess(root, did, schedule, verify=True)
        write_json_atomic(stamp_file, stamp)
        log.info("ablation %s: planned and preprocessed %d real cases once for every configuration (%.1f s)",
                 ablation, len(real_ids), time.perf_counter() - t0)
    else:
        log.info("ablation %s: nnU-Net plans of the same %d real cases reused", ablation, len(real_ids))
    syn_stamp_file = pre / "gliosynth_synthetic.json"
    old = json.loads(syn_stamp_file.read_text()) if syn_stamp_file.is_file() else {}
    syn_digest = synthetic.manifest_digest if synthetic is not None else ""
    data_dir = pre / schedule_data_identifier(pre, schedule)
    if old.get("digest") != syn_digest:  # another synthetic set under the same ids: drop its preprocessed cases
        for cid in old.get("ids", []):
            for suffix in (".b2nd", "_seg.b2nd", ".pkl"):
                (data_dir / f"{cid}{suffix}").unlink(missing_ok=True)
    # Stamped before preprocessing: a run killed half-way leaves every preprocessed case listed.
    kept = set(old.get("ids", [])) if old.get("digest") == syn_digest else set()
    write_json_atomic(syn_stamp_file, {"digest": syn_digest, "ids": sorted(kept | set(syn_ids))})
    if syn_ids:
        export_nnunet([real_cases[c] for c in real_ids] + [syn_cases[c] for c in syn_ids], raw_root, name,
                      real.label_scheme, did, extra=extra)
        # a case's .b2nd is renamed into place last: the cases that have one need no nnU-Net process (seconds)
        pending = [c for c in syn_ids if not (data_dir / f"{c}.b2nd").is_file()]
        if pending:
            preprocess_cases(root, did, schedule, pending)
        else:
            log.info("ablation %s: the %d synthetic cases are preprocessed already", ablation, len(syn_ids))
    # What the preprocessed data are: a trained fold records it, and is trained again when it changes.
    write_json_atomic(pre / "gliosynth_data.json", {**stamp, "synthetic_manifest_sha256": syn_digest})
    return NnunetData(dataset_id=did, folds=_assign_folds(pre, plans), root=str(root))


def schedule_data_identifier(pre: Path, schedule: NnunetSchedule) -> str:
    """The folder nnU-Net preprocesses the schedule's configuration into (from its plans)."""
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    conf = plans["configurations"][schedule.configuration]
    return str(conf.get("data_identifier", f"nnUNetPlans_{schedule.configuration}"))


def seed_params(schedule: NnunetSchedule) -> dict[str, Any]:
    """What a seed means under this schedule, for the run's params."""
    if schedule.reproducible:
        return {"seed_reproducible": True,
                "seed_note": "replay: augmentation in-process and seeded on the CPU, the same seed gives the same model"}
    return {"seed_reproducible": False,
            "seed_note": "repeat: nnU-Net's background augmentation workers are not seeded (and GPU kernels are not "
                         "deterministic), so a seed labels an independent repeat, not a reproducible run"}


def synthesizer_of(plan: MixPlan, synthetic: Dataset | None) -> str:
    """What made a configuration's synthetic cases: its crossed synthesizer, else the synthetic
    dataset's (as recorded in its dataset.json), or 'none' for real cases only."""
    if plan.synthesizer:
        return plan.synthesizer
    if not plan.synthetic_ids or synthetic is None:
        return REAL_ONLY
    return str(synthetic.info.get("synthesizer") or synthetic.info.get("model") or synthetic.name)


def mix_case_files(plans: Sequence[MixPlan], real: Dataset, synthetic: Dataset | None) -> dict[str, Any]:
    """For a segmenter that reads the cases' own files (no copy, no preprocessing): ``cases`` (every case a
    configuration trains on: real ids from ``real``, synthetic ids from ``synthetic``, their files by key)
    and ``data`` (what those files are: the two datasets and their manifest digests)."""
    wanted = {c for p in plans for c in p.train_ids}
    real_cases = {c.case_id: c for c in cases_from_dataset(real, ("train",))}
    syn_cases = {c.case_id: c for c in cases_from_dataset(synthetic, ("train",))} if synthetic is not None else {}
    both = sorted(set(real_cases) & set(syn_cases) & wanted)
    if both:
        raise AblationError(f"case ids {both[:5]} are in both the real dataset {real.name!r} and the synthetic "
                            f"dataset {synthetic.name!r}: a configuration's cases need one id each")
    if synthetic is not None and synthetic.label_scheme.name != real.label_scheme.name:
        raise AblationError(f"synthetic dataset {synthetic.name!r} ({synthetic.root / 'dataset.json'}) has label "
                            f"scheme {synthetic.label_scheme.name!r}; expected the real dataset's "
                            f"{real.label_scheme.name!r}")
    cases = {}
    for plan in plans:
        for cid in plan.train_ids:
            source = real_cases if cid in plan.real_ids else syn_cases
            ds = real if cid in plan.real_ids else synthetic
            if cid not in source:
                raise AblationError(f"configuration {plan.name}: case {cid} is not an ok, labelled train-split "
                                    f"case of dataset {ds.name if ds is not None else '-'!r}")
            cases[cid] = {k: str(v) for k, v in source[cid].files.items()}
    return {"cases": dict(sorted(cases.items())),
            "data": {"real": real.name, "real_manifest_sha256": real.manifest_digest,
                     "synthetic": synthetic.name if synthetic is not None else "",
                     "synthetic_manifest_sha256": synthetic.manifest_digest if synthetic is not None else ""}}


def plan_case_files(plan: MixPlan, data: Mapping[str, Any], who: str) -> dict[str, dict[str, str]]:
    """The files of ``plan``'s training cases from ``mix_case_files``' ``cases`` in ``data`` (refused, naming
    the cases, when ``prepare`` was given other configurations)."""
    cases = data["cases"]
    missing = [c for c in plan.train_ids if c not in cases]
    if missing:
        raise AblationError(f"configuration {plan.name}: cases {missing[:5]} were not prepared for {who} "
                            f"(prepare was given other configurations)")
    return {c: cases[c] for c in plan.train_ids}


def run_configuration(
    workspace: str | Path, ablation: str, plan: MixPlan, real: Dataset, synthetic: Dataset | None,
    cfg: AblationConfig, parent_run_id: str, data: Mapping[str, Any], generator: GeneratorRecord | None = None,
) -> ConfigResult:
    """Fit the configuration's segmenter on its mix, predict the real test split, score, log one MLflow child run.

    ``data`` is what the segmenter's ``prepare`` returned for the ablation. The training cases the
    segmenter read are checked against the plan after training and their counts logged. A failure
    is recorded (FAILED run, status 'failed') and returned, never raised: the other configurations go on.
    """
    from components.backends import get_segmenter
    from components.metrics.extra import extra_scores
    from components.metrics.segmentation import SegmentationEvalConfig, evaluate_pairs
    from components.segmentation.gpus import gpu_pool
    from components.tracking import PHANTOM_NOTE, finite_metrics, start_run

    ws = Path(workspace).resolve()
    segmenter = get_segmenter(plan.segmenter)
    params = {
        "config": plan.name, "segmenter": plan.segmenter, "synthesizer": synthesizer_of(plan, synthetic),
        "ratio": plan.ratio,
        "requested_synthetic": plan.requested_synthetic, "seed": plan.seed, "synthetic_only": plan.synthetic_only,
        "real_fraction": cfg.real_fraction, "real_subset_size": len(plan.real_pool), "subset_seed": cfg.subset_seed,
        "high_quality": cfg.high_quality, "n_test": len(plan.test_ids), "preset": cfg.preset,
        **segmenter.params(plan, cfg, data),
        "real_dataset": real.name, "real_manifest_sha256": real.manifest_digest,
        "synthetic_dataset": synthetic.name if synthetic is not None else "",
        "synthetic_manifest_sha256": synthetic.manifest_digest if synthetic is not None else "",
        "generator_train_cases": len(generator.train_cases) if generator is not None else 0,
    }
    for k in ("subset_of", "subset_fraction", "subset_seed"):
        if k in real.info:
            params[f"real_{k}"] = real.info[k]
    out_dir = ws / "ablations" / ablation / plan.name
    result = ConfigResult(name=plan.name, status="running", params=params)
    t0 = time.perf_counter()
    tags = {"ablation": ablation}
    if real.info.get("kind") == "phantom":
        tags["note"] = PHANTOM_NOTE
    try:
        with start_run(ws, cfg.experiment, plan.name, parent_run_id=parent_run_id, tags=tags) as run, \
                contextlib.ExitStack() as stack:
            result.run_id = run.run_id
            run.log_params(params)
            check_no_leak(plan, real, synthetic, generator)
            tests = held_out_cases(plan, real)
            if not plan.train_ids:
                raise AblationError(f"configuration {plan.name}: no training case")
            gpu = stack.enter_context(gpu_pool().claim()) if params.get("device") == "cuda" else None
            if gpu is not None:
                run.log_params({"gpu": gpu})
                result.params["gpu"] = gpu
            fitted = segmenter.fit(plan, cfg, data, gpu)
            if fitted.train_keys != plan.train_ids:
                extra = sorted(set(fitted.train_keys) - set(plan.train_ids))
                lost = sorted(set(plan.train_ids) - set(fitted.train_keys))
                raise AblationError(f"configuration {plan.name}: {fitted.label} trained on other cases than "
                                    f"planned (extra {extra[:5]}, missing {lost[:5]})")
            used = set(fitted.train_keys)
            counts = {"n_real": len(used & set(plan.real_ids)), "n_synthetic": len(used & set(plan.synthetic_ids))}
            run.log_params(counts)
            result.params.update(counts)
            preds = segmenter.predict(fitted, {c.case_id: [c.files[m] for m in ("t1n", "t1c", "t2w", "t2f")]
                                               for c in tests}, out_dir / "predictions", cfg, data, gpu)
            pairs = [(c.case_id, preds[c.case_id], c.files["seg"]) for c in tests]
            report = evaluate_pairs(pairs, SegmentationEvalConfig.from_preset(real.label_scheme.name, cfg.preset))
            extra = extra_scores(pairs, real.label_scheme, progress=False)  # GliomaGen's: kappa, accuracy, F1, volume r
            if report.problems or extra.problems:
                raise RuntimeError(f"configuration {plan.name}: scoring problems: "
                                   f"{(report.problems + extra.problems)[:3]}")
            out_dir.mkdir(parents=True, exist_ok=True)
            per_case = out_dir / "per_case.csv"
            for frame, path in ((report.table, per_case), (extra.table, out_dir / "extra_scores.csv")):
                with atomic_path(path, suffix=".csv") as tmp:
                    frame.to_csv(tmp, index=False)
            result.per_case_csv = str(per_case)
            metrics = {**segmentation_metric_means(report.table), **extra.metrics}
            own_metrics = getattr(segmenter, "metrics", None)  # a segmenter's own scores (ldmseg: variance vs error)
            if own_metrics is not None:
                metrics.update(own_metrics(out_dir / "predictions"))
            result.metrics = metrics
            run.log_metrics(finite_metrics(metrics))
            run.log_artifact(per_case)
            run.log_artifact(out_dir / "extra_scores.csv")
            own_files = getattr(segmenter, "artifacts", None)  # e.g. ldmseg's variance maps and calibration figure
            for path in own_files(out_dir / "predictions") if own_files is not None else ():
                run.log_artifact(path, "segmenter")
            if cfg.montage_cases:
                montage = prediction_montage(tests[: cfg.montage_cases], preds, out_dir / "predictions.png",
                                             plan.name, segmenter.label)
                run.log_artifact(montage)
            write_json_atomic(out_dir / "mix.json", {**plan.to_dict(), **fitted.record})
            run.log_artifact(out_dir / "mix.json")
        result.status = "ok"
    except Exception as err:  # one failed configuration never stops the ablation
        log.exception("configuration %s failed", plan.name)
        result.status = "failed"
        result.error = f"{type(err).__name__}: {err}"
    result.seconds = time.perf_counter() - t0
    return result


def segmentation_metric_means(table: pd.DataFrame) -> dict[str, float]:
    """Per-region means in the project's metric names, plus the spread of Dice over test cases."""
    from components.metrics import flat_metrics

    out = flat_metrics(table)
    for region, t in table.groupby("region", sort=False):
        out[f"dice_{region}_std"] = float(t["dice"].std(ddof=0))
    dice = [v for k, v in out.items() if k.startswith("dice_") and not k.endswith("_std")]
    if dice:
        out["dice_mean"] = float(np.mean(dice))
    return out


def prediction_montage(cases: list[ExportCase], preds: dict[str, Path], out: Path, title: str,
                       segmenter: str = "nnU-Net") -> Path:
    """Ground truth and prediction over FLAIR for a few test cases."""
    import nibabel as nib

    from components.viz import render_montage

    items = []
    for c in cases:
        img = nib.load(str(c.files["t2f"]))
        t2f = np.asanyarray(img.dataobj).astype(np.float32)
        gt = np.asanyarray(nib.load(str(c.files["seg"])).dataobj).astype(np.int16)
        pred = np.asanyarray(nib.load(str(preds[c.case_id])).dataobj).astype(np.int16)
        items.append({"case_id": f"{c.case_id} truth", "images": {"t2f": t2f}, "seg": gt, "affine": img.affine})
        items.append({"case_id": f"{c.case_id} {segmenter}", "images": {"t2f": t2f}, "seg": pred, "affine": img.affine})
    return render_montage(items, out, title=f"{title}: truth vs prediction (FLAIR)")


ARM_COLUMNS = ("segmenter", "synthesizer")  # what an ablation can cross besides ratio and seed


REAL_ONLY = "none"  # the synthesizer param of a configuration without synthetic cases


def arm_of(result: ConfigResult, column: str) -> str:
    """A configuration's segmenter or synthesizer as its tables show it ('' for the real-only baseline)."""
    v = str(result.params.get(column, DEFAULT_SEGMENTER if column == "segmenter" else "") or "")
    return "" if column == "synthesizer" and v == REAL_ONLY else v


def crossed(results: list[ConfigResult]) -> tuple[str, ...]:
    """Which of segmenter and synthesizer the ablation crossed (its tables then have those columns)."""
    return tuple(c for c in ARM_COLUMNS if len({arm_of(r, c) for r in results} - {""}) > 1)


def by_arm(table: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """``table`` per crossed arm (segmenter and/or synthesizer, named e.g. ``nnunet ldm``), or
    ``[("", table)]`` when nothing was crossed. A synthesizer's part also holds the real-only
    rows (synthesizer ''), the baseline its effects are paired against."""
    cols = [c for c in ARM_COLUMNS if c in table]
    if not cols:
        return [("", table)]
    parts = []
    segs = table.groupby("segmenter", sort=False) if "segmenter" in table else [("", table)]
    for seg, seg_part in segs:
        syn = seg_part["synthesizer"].fillna("").astype(str) if "synthesizer" in seg_part else None
        arms = [a for a in dict.fromkeys(syn) if a] if syn is not None else []
        if arms:
            for arm in arms:
                part = seg_part[syn.isin([arm, ""])]
                parts.append((" ".join(x for x in (str(seg), arm) if x), part.drop(columns=cols)))
        else:  # no crossed synthesizer here, or none of its configurations scored: the baseline alone
            parts.append((str(seg), seg_part.drop(columns=cols)))
    return parts


def arm_effects(per_case: pd.DataFrame, seed: int, n_resamples: int) -> pd.DataFrame:
    """Paired effects against ratio 0 within each crossed arm (segmenter, synthesizer)."""
    from components.metrics.paired import paired_effects

    parts = []
    cols = [c for c in ARM_COLUMNS if c in per_case]
    for _, part in by_arm(per_case):
        effects = paired_effects(part, seed=seed, n_resamples=n_resamples)
        key = per_case.loc[part.index, cols]
        for i, c in enumerate(cols):
            values = [v for v in dict.fromkeys(key[c].fillna("").astype(str)) if v]
            effects.insert(i, c, values[0] if values else "")
        parts.append(effects)
    if not parts:
        return paired_effects(per_case, seed=seed, n_resamples=n_resamples)
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]


def per_case_table(results: list[ConfigResult]) -> pd.DataFrame:
    """Every scored configuration's per-case scores, with its ratio, seed and variant (and its
    segmenter and synthesizer, when several were crossed)."""
    parts = []
    cols = crossed(results)
    for r in results:
        if r.status != "ok" or not r.per_case_csv:
            continue
        t = pd.read_csv(r.per_case_csv)
        for c in reversed(cols):
            t.insert(0, c, arm_of(r, c))
        t.insert(0, "config", r.name)
        t.insert(1, "ratio", float(r.params["ratio"]))
        t.insert(2, "seed", int(r.params["seed"]))
        t.insert(3, "synthetic_only", bool(r.params["synthetic_only"]))
        parts.append(t)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["config", "ratio", "seed", "synthetic_only", "case_id", "region", "dice", "hd95"])


def summary_table(results: list[ConfigResult], effects: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per configuration; with ``effects``, each row also carries its ratio's seed-mean scores and
    paired differences to the real-only baseline (``delta_*`` with ``_ci_low``/``_ci_high``/``_p``)."""
    rows = []
    cols = crossed(results)
    keys = ("ratio", "seed", "n_real", "n_synthetic", "synthetic_only")
    for r in results:
        arm = {c: arm_of(r, c) for c in cols}
        rows.append({"config": r.name, "status": r.status, **arm, **{k: r.params.get(k) for k in keys}, **r.metrics,
                     "seconds": round(r.seconds, 1), "error": r.error, "run_id": r.run_id})
    table = pd.DataFrame(rows)
    if effects is not None and not effects.empty and not table.empty:
        on = [c for c in (*ARM_COLUMNS, "ratio", "synthetic_only") if c in effects]
        eff = effects.drop(columns=[c for c in ("n_seeds", "n_cases", "paired_seeds", "n_paired_cases") if c in effects])
        if "synthesizer" in eff:  # the baseline row appears once per synthesizer: keep one for the real-only rows
            eff = eff[(eff["ratio"] > 0) | eff["synthetic_only"]]
            base = effects[(effects["ratio"] == 0) & ~effects["synthetic_only"].astype(bool)]
            base = base.drop(columns=[c for c in ("n_seeds", "n_cases", "paired_seeds", "n_paired_cases") if c in base])
            eff = pd.concat([eff, base.assign(synthesizer="").drop_duplicates(
                subset=[c for c in on if c != "synthesizer"])], ignore_index=True)
        eff = eff.rename(columns={c: f"{c}_seed_mean" for c in eff.columns
                                  if not c.startswith("delta_") and c not in on})
        table["ratio"] = table["ratio"].astype(float)
        table["synthetic_only"] = table["synthetic_only"].astype(bool)
        for c in on:
            if c in ARM_COLUMNS:
                table[c] = table[c].fillna("").astype(str)
        table = table.merge(eff, on=on, how="left")
    return table


def effect_metrics(effects: pd.DataFrame) -> dict[str, float]:
    """The effect table as flat MLflow metrics: ``effect_[<segmenter>_][<synthesizer>_]r<ratio>[_synonly]_<column>``
    (segmenter and synthesizer when several were crossed)."""
    out = {}
    for _, row in effects.iterrows():
        tag = f"r{row['ratio']:g}".replace(".", "p") + ("_synonly" if row["synthetic_only"] else "")
        for c in reversed(ARM_COLUMNS):
            if c in row and row[c]:
                tag = f"{row[c]}_{tag}"
        for col, v in row.items():
            if col in ("ratio", "synthetic_only") or not isinstance(v, (int, float, np.floating, np.integer)):
                continue
            if np.isfinite(v):
                out[f"effect_{tag}_{col}"] = float(v)
    return out


def by_arm_effects(effects: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The effect table (``arm_effects``) per crossed arm, named e.g. ``nnunet ldm``; ``[("", effects)]``
    when nothing was crossed."""
    cols = [c for c in ARM_COLUMNS if c in effects]
    if not cols:
        return [("", effects)]
    return [(" ".join(str(k) for k in (key if isinstance(key, tuple) else (key,)) if k), part.drop(columns=cols))
            for key, part in effects.groupby(cols, sort=False)]


def dice_vs_ratio_plot(effects: pd.DataFrame, out: Path, title: str = "") -> Path:
    """Left: mean Dice per region against ratio, 95 % bootstrap interval over seeds and test cases.
    Right: paired difference to the real-only baseline with its 95 % interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    fig, (ax, axd) = plt.subplots(1, 2, figsize=(10, 4))
    if effects.empty:  # every configuration failed: an empty, labelled figure, not a crash
        effects = pd.DataFrame(columns=["ratio", "synthetic_only", "n_seeds", "n_cases"])
        ax.text(0.5, 0.5, "no configuration scored", ha="center", transform=ax.transAxes)
    regions = [c[len("delta_dice_"):] for c in effects.columns
               if c.startswith("delta_dice_") and not c.endswith(("_ci_low", "_ci_high", "_p"))]
    n_seeds = int(effects["n_seeds"].max()) if len(effects) else 0
    n_cases = int(effects["n_cases"].max()) if len(effects) else 0
    arms = by_arm_effects(effects)
    if len(arms) > 2:  # one line per crossed arm: the first region (WT) only, or the plot is unreadable
        regions = regions[:1]
    for (seg, eff), (syn_only, style) in itertools.product(arms, ((False, "-o"), (True, "--s"))):
        part = eff[eff["synthetic_only"] == syn_only].sort_values("ratio")
        if part.empty:
            continue
        for region in regions:
            label = f"{seg + ' ' if seg else ''}{region}{' (synthetic only)' if syn_only else ''}"
            for axis, col in ((ax, f"dice_{region}"), (axd, f"delta_dice_{region}")):
                y = part[col].to_numpy(dtype=float)
                lo = np.nan_to_num(y - part[f"{col}_ci_low"].to_numpy(dtype=float), nan=0.0)
                hi = np.nan_to_num(part[f"{col}_ci_high"].to_numpy(dtype=float) - y, nan=0.0)
                axis.errorbar(part["ratio"], y, yerr=[np.maximum(lo, 0), np.maximum(hi, 0)], fmt=style, capsize=3,
                              label=label)
    ax.set_ylabel("Dice on held-out real test cases")
    ax.set_ylim(0, 1)
    axd.axhline(0.0, color="k", lw=0.8)
    axd.set_ylabel("paired difference to ratio 0 (Dice)")
    for axis in (ax, axd):
        axis.set_xlabel("synthetic cases per real training case")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    fig.suptitle((title + "\n" if title else "") + f"mean over {n_seeds} seed(s), {n_cases} test cases; "
                 "error bars: 95 % bootstrap interval over seeds and test cases", fontsize=9)
    fig.tight_layout()
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return out
