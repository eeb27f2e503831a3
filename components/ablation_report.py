"""What an ablation reports: its MLflow parent run (opened before the first configuration, closed
after the summary, with a markdown description that leads with the effect), and the summary files
(summary.csv, effect.csv, per_case.csv, dice_vs_ratio.png) with the effect metrics on that run."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from components.ablation import (
    AblationConfig,
    ConfigResult,
    arm_effects,
    by_arm_effects,
    dice_vs_ratio_plot,
    effect_metrics,
    per_case_table,
    seed_params,
    summary_table,
)
from components.io import atomic_path
from data_catalog import Dataset, open_dataset


def open_parent_run(workspace: str, ablation: str, config: AblationConfig, real: str, real_sha256: str,
                    synthetic: str | None, synthetic_sha256: str | None, plans: list[dict],
                    synthesis_metrics: dict[str, float] | None = None,
                    segmenters: tuple[str, ...] = ("nnunet",)) -> str:
    """Open the ablation's MLflow parent run, with what describes the whole ablation: its grid, the
    data, the synthetic set's scores (logged once here, never copied onto every configuration) and a
    description. The run stays RUNNING while the configurations train: ``close_parent_run`` ends it."""
    from components.segmentation.nnunet import SCHEDULES
    from components.tracking import PHANTOM_NOTE, finite_metrics, open_run

    ds = open_dataset(workspace, real)
    syn = open_dataset(workspace, synthetic) if synthetic else None
    tags = {"ablation": ablation, "role": "parent"}
    if ds.info.get("kind") == "phantom":
        tags["note"] = PHANTOM_NOTE
    run = open_run(workspace, config.experiment, ablation, tags=tags)
    try:
        run.log_params({"real_dataset": real, "real_manifest_sha256": real_sha256,
                        "synthetic_dataset": synthetic or "", "synthetic_manifest_sha256": synthetic_sha256 or "",
                        "ratios": list(config.ratios), "seeds": list(config.seeds),
                        "synthetic_only": config.synthetic_only, "real_fraction": config.real_fraction,
                        "subset_seed": config.subset_seed, "high_quality": config.high_quality,
                        "schedule": config.with_schedule().schedule, "preset": config.preset,
                        "n_configurations": len(plans), "segmenters": list(segmenters),
                        **seed_params(SCHEDULES[config.with_schedule().schedule])})
        if synthesis_metrics:
            run.log_metrics(finite_metrics(synthesis_metrics))
        run.set_note(parent_note(ablation, config, ds, syn, plans))
        run.flush()
    except BaseException:
        from components.tracking import end_run

        end_run(workspace, run.run_id, "FAILED")
        raise
    return run.run_id


EFFECTS_HEADING = "### Effect of synthetic cases"
DETAILS_HEADING = "### What was compared, on which data"


def parent_note(ablation: str, config: AblationConfig, real: Dataset, synthetic: Dataset | None,
                plans: list[dict]) -> str:
    """The parent run's description (markdown): the question, the effect table (filled in by the
    summary), then what was compared, on which data, and where the rest is."""
    from components.tracking import PHANTOM_NOTE

    cfg = config.with_schedule()
    variants = ", plus synthetic-only configurations" if cfg.synthetic_only else ""
    n_test = len(plans[0]["test_ids"]) if plans else len(real.ok_cases("test"))
    n_pool = len(plans[0]["real_pool"]) if plans else len(real.ok_cases("train"))
    subset = f" (fraction {cfg.real_fraction:g}, subset seed {cfg.subset_seed})" if cfg.real_fraction < 1 else ""
    phantom = real.info.get("kind") == "phantom"
    segs = list(dict.fromkeys(str(p.get("segmenter", "nnunet")) for p in plans)) or ["nnunet"]
    who = segs[0] if len(segs) == 1 else "each segmenter"
    lines = [f"## Ratio ablation `{ablation}`: do synthetic cases make {who} better on held-out real cases?", "",
             effects_heading(phantom), "", "The configurations are running; the table appears here when they are done.",
             "", DETAILS_HEADING, ""]
    if phantom:
        lines += [f"> **{PHANTOM_NOTE}**", ""]
    lines += [
              f"- **Configurations:** {len(plans)}, one child run each: ratios {', '.join(f'{r:g}' for r in cfg.ratios)} "
              f"synthetic cases per real training case, seeds {', '.join(str(s) for s in cfg.seeds)}{variants}; "
              f"segmenters {', '.join(f'`{s}`' for s in segs)}, schedule `{cfg.schedule}`.",
              "- **Comparison:** each ratio against ratio 0 (real cases only) of the same seed on the same test cases: "
              "mean paired difference, 95 % bootstrap interval over seeds and test cases, Wilcoxon signed-rank p.",
              f"- **Real data:** `{real.name}` ({real.info.get('kind', '?')}, manifest `{real.manifest_digest[:12]}`): "
              f"{n_pool} training cases{subset}; {n_test} held-out test cases, the only test set."]
    if synthetic is not None:
        pick = "by descending quality score" if cfg.high_quality else "at random (nested across ratios)"
        arms = synthetic.info.get("synthesizers") or []
        crossing = (f" from synthesizers {', '.join(f'`{a}`' for a in arms)}, each ratio run once per synthesizer "
                    "with its cases only, the real-only baseline shared" if len(arms) > 1 else "")
        lines.append(f"- **Synthetic data:** `{synthetic.name}` (manifest `{synthetic.manifest_digest[:12]}`): "
                     f"{len(synthetic.ok_cases())} cases{crossing}; a configuration takes its cases {pick} among "
                     "those whose mask comes from its real training cases.")
    else:
        lines.append("- **Synthetic data:** none (ratio 0 only).")
    lines.append("- **Where to look:** the child runs side by side (select them, then Compare); this run's metrics "
                 "`effect_[<segmenter>_][<synthesizer>_]r<ratio>_delta_dice_<region>` (with `_ci_low`, `_ci_high`, "
                 "`_p`; segmenter and synthesizer when several were crossed) and the synthetic set's "
                 "scores against the real test split (`fid2d_*`, `kid_*`, ..., each beside its real-vs-real `_floor`); "
                 "its artifacts `effect.csv`, `dice_vs_ratio.png`, `summary.csv`, `per_case.csv`.")
    return "\n".join(lines)


def _fmt(v: float, spec: str) -> str:
    import math

    return format(v, spec) if isinstance(v, (int, float)) and math.isfinite(v) else "n/a"


def effects_heading(phantom: bool) -> str:
    return EFFECTS_HEADING + (" (phantom data: a pipeline check, never a claim about BraTS)" if phantom else "")


def effects_markdown(effects: pd.DataFrame, n_ok: int, n_failed: int, plot_run_id: str | None = None,
                     phantom: bool = False) -> str:
    """The effect table as the markdown section of the parent run's description (with the
    Dice-vs-ratio plot of run ``plot_run_id`` under it). The table comes right under the heading:
    it is what the UI shows before 'Show more'."""
    head = [effects_heading(phantom), ""]
    seeds = "/".join(str(v) for v in sorted(set(effects["n_seeds"].astype(int)))) if len(effects) else "0"
    cases = "/".join(str(v) for v in sorted(set(effects["n_cases"].astype(int)))) if len(effects) else "0"
    legend = ["", f"{n_ok} configuration(s) scored, {n_failed} failed; {seeds} seed(s) per ratio, {cases} held-out "
              "real test cases. Dice: mean over seeds and cases. ΔDice: difference to ratio 0 paired by seed and "
              "test case, its 95 % bootstrap interval over seeds and cases, and the Wilcoxon signed-rank p over the "
              "test cases."]
    if effects.empty:
        return "\n".join([*head, "No configuration scored.", *legend])
    regions = [c[len("delta_dice_"):] for c in effects.columns
               if c.startswith("delta_dice_") and not c.endswith(("_ci_low", "_ci_high", "_p"))]
    answer = effects_answer(effects, regions[0]) if regions else ""
    if answer:
        head += [answer, ""]
    rows = ["| ratio | " + " | ".join(f"Dice {r} | ΔDice {r} [95 % CI], p" for r in regions) + " |",
            "|" + "---|" * (1 + 2 * len(regions))]
    for _, e in effects.iterrows():
        cells = [_which(e, " synthetic only")]
        for region in regions:
            k = f"delta_dice_{region}"
            cells.append(_fmt(e[f"dice_{region}"], ".3f"))
            if e["ratio"] == 0 and not e["synthetic_only"]:
                cells.append("baseline")
            else:
                cells.append(f"{_fmt(e[k], '+.3f')} [{_fmt(e[f'{k}_ci_low'], '+.3f')}, "
                             f"{_fmt(e[f'{k}_ci_high'], '+.3f')}], p={_fmt(e[f'{k}_p'], '.2g')}")
        rows.append("| " + " | ".join(cells) + " |")
    plot = (["", f"![Dice against ratio](get-artifact?path=dice_vs_ratio.png&run_uuid={plot_run_id})"]
            if plot_run_id else [])
    return "\n".join([*head, *rows, *legend, *plot])


def _which(e: pd.Series, synthetic_only: str = " (synthetic only)") -> str:
    """A row of the effect table by name: its ratio, variant and (when several were crossed) segmenter
    and synthesizer."""
    arm = "".join(f"{e[c]} " for c in ("segmenter", "synthesizer") if c in e and e[c])
    return arm + f"{e['ratio']:g}" + (synthetic_only if e["synthetic_only"] else "")


def effects_answer(effects: pd.DataFrame, region: str) -> str:
    """One line that answers the question for ``region``: each ratio's paired Dice difference to ratio 0
    with its interval (what the UI shows of the description before 'Show more')."""
    k = f"delta_dice_{region}"
    parts = [f"{_which(e)}: {_fmt(e[k], '+.3f')} "
             f"[{_fmt(e[f'{k}_ci_low'], '+.3f')}, {_fmt(e[f'{k}_ci_high'], '+.3f')}]"
             for _, e in effects.iterrows() if e["ratio"] != 0 or e["synthetic_only"]]
    return f"**ΔDice {region} against real only, by ratio:** " + "; ".join(parts) if parts else ""


def with_effects(note: str, section: str) -> str:
    """The parent run's description with its effect section replaced by ``section``."""
    before, _, rest = note.partition(EFFECTS_HEADING)
    _, _, details = rest.partition(DETAILS_HEADING)
    out = before.rstrip() + "\n\n" + section.rstrip() + "\n\n" + (DETAILS_HEADING + details if details else "")
    return out.rstrip()[:8000]


def close_parent_run(workspace: str, parent_run_id: str, n_failed: int) -> str:
    """End the parent run after the last configuration: FAILED if any configuration failed."""
    from components.tracking import end_run

    status = "FAILED" if n_failed else "FINISHED"
    end_run(workspace, parent_run_id, status)
    return status


def summarize_ablation(workspace: str, ablation: str, config: AblationConfig, parent_run_id: str,
                 results: list[dict], phantom: bool = False) -> dict:
    """Paired effects against ratio 0, the summary and effect CSVs and the plot, logged on the parent run."""
    import mlflow
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

    from components.metrics.paired import effect_lines
    from components.tracking import PHANTOM_NOTE, set_note, tracking_uri

    out = Path(workspace) / "ablations" / ablation
    out.mkdir(parents=True, exist_ok=True)
    configs = [ConfigResult(**r) for r in results]
    per_case = per_case_table(configs)
    effects = arm_effects(per_case, seed=min(config.seeds), n_resamples=config.bootstrap_resamples)
    table = summary_table(configs, effects)
    files = {"summary_csv": out / "summary.csv", "effect_csv": out / "effect.csv", "per_case_csv": out / "per_case.csv"}
    for key, frame in (("summary_csv", table), ("effect_csv", effects), ("per_case_csv", per_case)):
        with atomic_path(files[key], suffix=".csv") as tmp:
            frame.to_csv(tmp, index=False)
    title = ablation + (f" ({PHANTOM_NOTE})" if phantom else "")
    plot = dice_vs_ratio_plot(effects, out / "dice_vs_ratio.png", title=title)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri(workspace))
    for path in (*files.values(), plot):
        client.log_artifact(parent_run_id, str(path))
    metrics = effect_metrics(effects)
    if metrics:
        now = int(time.time() * 1000)
        client.log_batch(parent_run_id, metrics=[mlflow.entities.Metric(k, v, now, 0) for k, v in metrics.items()])
    # The description ends with the effect table (replacing the one of an earlier run of this ablation).
    n_ok = sum(c.status == "ok" for c in configs)
    note = client.get_run(parent_run_id).data.tags.get(MLFLOW_RUN_NOTE, "")
    set_note(client, parent_run_id, with_effects(note, effects_markdown(effects, n_ok, len(configs) - n_ok,
                                                                        plot_run_id=parent_run_id, phantom=phantom)))
    return {**{k: str(v) for k, v in files.items()}, "plot": str(plot), "table": table.to_dict(orient="records"),
            "effects": effects.to_dict(orient="records"),
            "effect_lines": [line for arm, part in by_arm_effects(effects)
                             for line in ([f"{arm}:"] if arm else []) + effect_lines(part)]}
