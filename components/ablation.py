"""The ratio ablation: real+synthetic mixes, nnU-Net per mix, scores on held-out real cases only.

A mix = real train cases (optionally a seeded subset: the data-scarce case) + synthetic cases at
ratio r (synthetic per real), optionally only the highest-quality ones, optionally without the
real cases. The test set is the real dataset's fixed test split. Leakage is checked, not assumed:
:func:`check_no_leak` refuses any training case that is, or derives from, a test case.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from components.export import ExportCase, cases_from_dataset, export_nnunet, reserve_dataset_ids
from data_catalog import Dataset

log = logging.getLogger(__name__)


class LeakError(RuntimeError):
    """A training set holds a test case or something derived from one."""


class AblationConfig(BaseModel):
    """One ablation: the grid of configurations and how each is trained and scored."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ratios: tuple[float, ...] = Field((0.0, 0.5, 1.0, 2.0), description="synthetic cases per real training case")
    seeds: tuple[int, ...] = Field((0,), description="one configuration per ratio and seed")
    synthetic_only: bool = Field(False, description="add synthetic-only configurations (no real training case)")
    real_fraction: float = Field(1.0, gt=0.0, le=1.0, description="seeded fraction of the real training cases")
    high_quality: bool = Field(False, description="take synthetic cases by descending quality_score, not at random")
    schedule: str = Field("cpu-demo", description="nnU-Net schedule: cpu-demo or full")
    preset: str = Field("brats2023", description="lesion-wise preset: brats2023 or brats2024")
    experiment: str = "gliosynth-ablation"
    montage_cases: int = 2


@dataclass(frozen=True)
class MixPlan:
    """Which cases one configuration trains on and tests on (ids only: cheap to hash and cache)."""

    name: str
    ratio: float
    seed: int
    synthetic_only: bool
    real_ids: tuple[str, ...]
    synthetic_ids: tuple[str, ...]
    test_ids: tuple[str, ...]
    requested_synthetic: int

    @property
    def n_real(self) -> int:
        return len(self.real_ids)

    @property
    def n_synthetic(self) -> int:
        return len(self.synthetic_ids)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _labelled(ds: Dataset, split: str) -> pd.DataFrame:
    m = ds.ok_cases(split)
    return m[m["seg"].astype(str) != ""].sort_values("case_id").reset_index(drop=True)


def _config_name(ratio: float, seed: int, synthetic_only: bool) -> str:
    r = f"{ratio:g}".replace(".", "p")
    return f"{'synonly-' if synthetic_only else ''}r{r}-s{seed}"


def plan_mixes(real: Dataset, synthetic: Dataset | None, cfg: AblationConfig) -> list[MixPlan]:
    """All configurations of the ablation. Selection is seeded and nested across ratios.

    For one seed the synthetic cases are taken from one fixed permutation, so the cases of ratio
    0.5 are a subset of those of ratio 1: differences between ratios are not re-draws.
    """
    real_train = _labelled(real, "train")["case_id"].tolist()
    test_ids = tuple(_labelled(real, "test")["case_id"].tolist())
    if not real_train:
        raise ValueError(f"dataset {real.name!r} has no labelled train-split case")
    if not test_ids:
        raise ValueError(f"dataset {real.name!r} has no labelled test-split case to score on")
    if any(r > 0 for r in cfg.ratios) and synthetic is None:
        raise ValueError("ratios above 0 need a synthetic dataset")
    plans = []
    for seed in cfg.seeds:
        rng = np.random.default_rng(seed)
        n_keep = max(1, round(cfg.real_fraction * len(real_train)))
        real_ids = tuple(sorted(rng.permutation(real_train)[:n_keep].tolist()))
        candidates: list[str] = []
        if synthetic is not None:
            syn = _labelled(synthetic, "train")
            allowed = set(real_ids)
            syn = syn[syn["source_case"].astype(str).isin(allowed | (set(real_train) if cfg.synthetic_only else set()))]
            if cfg.high_quality and "quality_score" in syn:
                # higher quality_score is better; ties broken by id so the order is total
                syn = syn.sort_values(["quality_score", "case_id"], ascending=[False, True])
                candidates = syn["case_id"].tolist()
            else:
                candidates = np.random.default_rng([seed, 1]).permutation(syn["case_id"].tolist()).tolist()
        variants = [(r, False) for r in cfg.ratios]
        if cfg.synthetic_only:
            variants += [(r, True) for r in cfg.ratios if r > 0]
        for ratio, syn_only in variants:
            want = round(ratio * len(real_ids))
            chosen = tuple(sorted(candidates[:want]))
            if len(chosen) < want:
                log.warning("ratio %g seed %d: asked for %d synthetic cases, only %d eligible", ratio, seed, want,
                            len(chosen))
            plans.append(MixPlan(
                name=_config_name(ratio, seed, syn_only), ratio=float(ratio), seed=int(seed), synthetic_only=syn_only,
                real_ids=() if syn_only else real_ids, synthetic_ids=chosen, test_ids=test_ids,
                requested_synthetic=int(want),
            ))
    return plans


def check_no_leak(plan: MixPlan, real: Dataset, synthetic: Dataset | None) -> None:
    """Raise LeakError if any training case is a test case or derives from one (checked on the manifests)."""
    rsplit = dict(zip(real.manifest["case_id"], real.manifest["split"], strict=True))
    test = set(plan.test_ids)
    bad = [c for c in plan.real_ids if c in test or rsplit.get(c) != "train"]
    if bad:
        raise LeakError(f"configuration {plan.name}: real training cases in the test split: {bad[:5]}")
    if plan.synthetic_ids:
        if synthetic is None:
            raise LeakError(f"configuration {plan.name}: synthetic cases listed but no synthetic dataset")
        m = synthetic.manifest.set_index("case_id")
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


def nnunet_name(ablation: str, plan: MixPlan) -> str:
    return sanitize(f"{ablation}_{plan.name}")


def reserve_ids(workspace: str | Path, ablation: str, plans: list[MixPlan]) -> dict[str, int]:
    """nnU-Net dataset ids for every configuration, reserved before the fan-out."""
    return reserve_dataset_ids(Path(workspace).resolve() / "nnunet" / "raw", [nnunet_name(ablation, p) for p in plans])


def mix_cases(plan: MixPlan, real: Dataset, synthetic: Dataset | None) -> tuple[list[ExportCase], list[ExportCase]]:
    real_cases = {c.case_id: c for c in cases_from_dataset(real, ("train", "test"))}
    syn_cases = {c.case_id: c for c in cases_from_dataset(synthetic, ("train",))} if synthetic is not None else {}
    train = [real_cases[c] for c in plan.real_ids] + [syn_cases[c] for c in plan.synthetic_ids]
    test = [real_cases[c] for c in plan.test_ids]
    return train, test


def run_configuration(
    workspace: str | Path, ablation: str, plan: MixPlan, real: Dataset, synthetic: Dataset | None,
    cfg: AblationConfig, parent_run_id: str, extra_metrics: dict[str, float] | None = None,
) -> ConfigResult:
    """Export the mix, train nnU-Net, predict the real test split, score, log one MLflow child run.

    A failure is recorded (FAILED run, status 'failed') and returned, never raised: the other
    configurations go on.
    """
    from components.metrics.segmentation import SegmentationEvalConfig, evaluate_pairs
    from components.segmentation.nnunet import SCHEDULES, plan_and_preprocess, predict, train
    from components.tracking import PHANTOM_NOTE, finite_metrics, start_run

    ws = Path(workspace).resolve()
    schedule = SCHEDULES[cfg.schedule]
    params = {
        "config": plan.name, "n_real": plan.n_real, "n_synthetic": plan.n_synthetic, "ratio": plan.ratio,
        "seed": plan.seed, "synthetic_only": plan.synthetic_only, "real_fraction": cfg.real_fraction,
        "high_quality": cfg.high_quality, "n_test": len(plan.test_ids), "schedule": cfg.schedule,
        "real_dataset": real.name, "real_manifest_sha256": real.manifest_digest,
        "synthetic_dataset": synthetic.name if synthetic is not None else "",
        "synthetic_manifest_sha256": synthetic.manifest_digest if synthetic is not None else "",
        "requested_synthetic": plan.requested_synthetic,
    }
    out_dir = ws / "ablations" / ablation / plan.name
    result = ConfigResult(name=plan.name, status="running", params=params)
    t0 = time.perf_counter()
    tags = {"ablation": ablation}
    if real.info.get("kind") == "phantom":
        tags["note"] = PHANTOM_NOTE
    try:
        with start_run(ws, cfg.experiment, plan.name, parent_run_id=parent_run_id, tags=tags) as run:
            result.run_id = run.run_id
            run.log_params(params)
            check_no_leak(plan, real, synthetic)
            train_cases, test_cases = mix_cases(plan, real, synthetic)
            if not train_cases:
                raise ValueError(f"configuration {plan.name}: no training case")
            raw_root = ws / "nnunet" / "raw"
            ds_name = nnunet_name(ablation, plan)
            folder = export_nnunet(
                train_cases, raw_root, ds_name, real.label_scheme, reserve_dataset_ids(raw_root, [ds_name])[ds_name],
                extra={"gliosynth_ablation": ablation, "gliosynth_config": plan.name},
            )
            did = int(folder.name[len("Dataset"):len("Dataset") + 3])
            plan_and_preprocess(ws / "nnunet", did, schedule, verify=True)
            model_dir = train(ws / "nnunet", did, schedule, seed=plan.seed)
            preds = predict(model_dir, {c.case_id: [c.files[m] for m in ("t1n", "t1c", "t2w", "t2f")]
                                        for c in test_cases}, out_dir / "predictions", schedule)
            report = evaluate_pairs(
                [(c.case_id, preds[c.case_id], c.files["seg"]) for c in test_cases],
                SegmentationEvalConfig.from_preset(real.label_scheme.name, cfg.preset),
            )
            if report.problems:
                raise RuntimeError(f"configuration {plan.name}: scoring problems: {report.problems[:3]}")
            out_dir.mkdir(parents=True, exist_ok=True)
            per_case = out_dir / "per_case.csv"
            report.table.to_csv(per_case, index=False)
            result.per_case_csv = str(per_case)
            metrics = segmentation_metric_means(report.table)
            metrics.update(extra_metrics or {})
            result.metrics = metrics
            run.log_metrics(finite_metrics(metrics))
            run.log_artifact(per_case)
            montage = prediction_montage(test_cases[: cfg.montage_cases], preds, out_dir / "predictions.png", plan.name)
            run.log_artifact(montage)
            (out_dir / "mix.json").write_text(json.dumps(plan.to_dict(), indent=1))
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


def prediction_montage(cases: list[ExportCase], preds: dict[str, Path], out: Path, title: str) -> Path:
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
        items.append({"case_id": f"{c.case_id} nnU-Net", "images": {"t2f": t2f}, "seg": pred, "affine": img.affine})
    return render_montage(items, out, title=f"{title}: truth vs prediction (FLAIR)")


def summary_table(results: list[ConfigResult]) -> pd.DataFrame:
    rows = []
    for r in results:
        rows.append({"config": r.name, "status": r.status, **{k: r.params.get(k) for k in
                     ("ratio", "seed", "n_real", "n_synthetic", "synthetic_only")}, **r.metrics,
                     "seconds": round(r.seconds, 1), "error": r.error, "run_id": r.run_id})
    return pd.DataFrame(rows)


def dice_vs_ratio_plot(table: pd.DataFrame, out: Path, title: str = "") -> Path:
    """Mean Dice per region against ratio; error bars: std over seeds (or over test cases for one seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from components.io import atomic_path

    ok = table[table["status"] == "ok"]
    fig, ax = plt.subplots(figsize=(6, 4))
    regions = [c[len("dice_"):] for c in ok.columns
               if c.startswith("dice_") and c != "dice_mean" and not c.endswith("_std")]
    n_seeds = ok["seed"].nunique() if len(ok) else 0
    for syn_only, style in ((False, "-o"), (True, "--s")):
        part = ok[ok["synthetic_only"] == syn_only]
        if part.empty:
            continue
        for region in regions:
            g = part.groupby("ratio")
            mean = g[f"dice_{region}"].mean()
            # Several seeds: spread over seeds. One seed: spread over the test cases.
            std = g[f"dice_{region}"].std(ddof=0) if n_seeds > 1 else g[f"dice_{region}_std"].mean()
            label = f"{region}{' (synthetic only)' if syn_only else ''}"
            ax.errorbar(mean.index, mean.values, yerr=std.fillna(0.0).values, fmt=style, capsize=3, label=label)
    ax.set_xlabel("synthetic cases per real training case")
    ax.set_ylabel("Dice on held-out real test cases")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    spread = f"std over {n_seeds} seeds" if n_seeds > 1 else "std over test cases (one seed)"
    ax.set_title((title + "\n" if title else "") + f"error bars: {spread}", fontsize=9)
    fig.tight_layout()
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return out

