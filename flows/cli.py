"""The command line's verb table: each verb, the flow it runs, the component that does the work, and
the pydantic models its flags are made from (flows/flags.py). ``gliosynth VERB`` or
``python -m flows VERB``; flows/__main__.py builds the parser from :data:`VERBS`.

| verb | flow | the work |
| --- | --- | --- |
| phantom | flows/datasets.py phantom_flow | components/phantom.py |
| ingest | flows/datasets.py ingest_flow | components/brats/ingest.py |
| ingest-synthetic | flows/datasets.py ingest_synthetic_flow | components/foreign.py |
| datasets | (none: reads the catalog) | data_catalog/__init__.py |
| augment-masks | flows/masks.py augment_masks_flow | components/masks/dataset.py |
| train-synthesizer | flows/synthesis.py train_synthesizer_flow | components/synthesis/training.py |
| synthesize | flows/synthesis.py synthesize_flow | components/synthesis/writer.py |
| evaluate-synthesis | flows/metrics.py evaluate_synthesis_flow | components/metrics/synthesis.py |
| evaluate-segmentation | flows/metrics.py evaluate_segmentation_flow | components/metrics/segmentation.py |
| export | flows/ablation.py export_flow | components/export.py |
| ablation | flows/ablation.py ablation_flow | components/ablation.py |
| pipeline | flows/pipeline.py pipeline_flow | every stage above |
| serve | (none: a server and a worker) | flows/serve.py |
| dashboard-link | (none: reads the MLflow store) | components/dashboard.py |
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from flows.flags import Flags
from flows.params import StageParams

Values = dict[str, dict[str, Any]]  # flag values by group ("" = the verb's params, else a nested model)


@dataclass(frozen=True)
class Verb:
    name: str
    help: str
    description: str
    flow: str  # the flow it runs (file and function), for the table above and `--help`
    work: str  # the component that does the work
    flags: Callable[[], tuple[Flags, ...]]  # imported when the verb is chosen: the parser stays fast
    run: Callable[[argparse.Namespace, Values], int]
    reads: dict[str, Any] = field(default_factory=dict)  # flows.cli_common.reads(...)
    extra: Callable[[argparse.ArgumentParser], None] | None = None  # flags that are no model field


class WorkspaceOptions(StageParams):
    """A verb that only reads or serves the workspace."""


class PipelineOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    config: str = Field("configs/demo.yaml", description="pipeline config YAML")
    workspace: str | None = Field(None, description="override the config's workspace folder")


class ServeOptions(WorkspaceOptions):
    port: int = Field(4200, ge=1, le=65535, description="server port on 127.0.0.1")


class DashboardOptions(WorkspaceOptions):
    host: str = Field("127.0.0.1", description="host the MLflow UI is served on")
    port: int = Field(5000, ge=1, le=65535, description="port the MLflow UI is served on")
    parent_run: str | None = Field(None, description="an ablation's parent run id (default: the latest ablation)")
    screenshot: str | None = Field(None, description="save compare-runs.png and parent-run.png in this folder (needs "
                                   "Chromium; serves the store itself on a free port of 127.0.0.1)")
    window: tuple[int, int] = Field((1600, 1200), description="browser window for --screenshot: width height")


# --------------------------------------------------------------------------- foundation
def _phantom_flags() -> tuple[Flags, ...]:
    from components.phantom import PhantomConfig
    from flows.datasets import PhantomParams

    return (Flags(PhantomParams, skip=("config",)),
            Flags(PhantomConfig, "config", only=("cases", "spacing", "label_scheme", "seed", "test_fraction", "workers")))


def _phantom(a: argparse.Namespace, v: Values) -> int:
    from flows.datasets import PhantomParams, phantom_flow

    out = phantom_flow(PhantomParams(**v[""], config=v["config"]))
    return _dataset_lines(out)


def _dataset_lines(out: dict) -> int:
    for cid, reason in sorted(out.get("quarantined", {}).items()):
        print(f"  quarantined {cid}: {reason}")
    for w in out.get("warnings", ()):
        print(f"  warning: {w}")
    print(out["line"])
    if out.get("montage"):
        print(f"montage: {out['montage']}")
    return 0 if out.get("n_ok", 1) > 0 else 1


def _ingest_flags() -> tuple[Flags, ...]:
    from components.brats import IngestConfig
    from flows.datasets import IngestParams

    return (Flags(IngestParams, skip=("config",), positional=("source",)),
            Flags(IngestConfig, "config", skip=("split_salt",)))


def _ingest(a: argparse.Namespace, v: Values) -> int:
    from flows.datasets import IngestParams, ingest_flow

    return _dataset_lines(ingest_flow(IngestParams(**v[""], config=v["config"])))


def _ingest_synthetic_flags() -> tuple[Flags, ...]:
    from components.foreign import ForeignIngestConfig
    from flows.datasets import IngestSyntheticParams

    return (Flags(IngestSyntheticParams, skip=("config",), positional=("source",)),
            Flags(ForeignIngestConfig, "config"))


def _ingest_synthetic(a: argparse.Namespace, v: Values) -> int:
    from components.foreign import UNKNOWN, ForeignIngestConfig, check_inputs
    from flows.datasets import IngestSyntheticParams, ingest_synthetic_flow

    top, cfg = dict(v[""]), ForeignIngestConfig(**v["config"])
    gen = top["generator_train_cases"]
    top["generator_train_cases"] = UNKNOWN if gen.strip().lower() == UNKNOWN else str(Path(gen).resolve())
    check_inputs(top["source"], top.get("workspace", "workspace"), top["name"], top["real"], top["links"],
                 top["generator_train_cases"], cfg)  # one sentence before Prefect starts
    return _dataset_lines(ingest_synthetic_flow(IngestSyntheticParams(**top, config=cfg)))


def _datasets(a: argparse.Namespace, v: Values) -> int:
    from data_catalog import list_datasets

    df = list_datasets(a.workspace)
    print(df.to_string(index=False) if len(df) else f"no datasets in {a.workspace}")
    return 0


# --------------------------------------------------------------------------- masks and synthesis
def _masks_flags() -> tuple[Flags, ...]:
    from components.masks import MaskAugmentConfig
    from flows.masks import AugmentMasksParams

    return (Flags(AugmentMasksParams, skip=("config", "source_config")),
            Flags(MaskAugmentConfig, "config", only=("per_case", "seed", "max_draws", "splits", "workers")))


def _masks_config_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", dest="config_file", default=None,
                   help="YAML file with MaskAugmentConfig fields (transform probabilities and ranges, check bounds); "
                        "flags given on the command line override it")


def _augment_masks(a: argparse.Namespace, v: Values) -> int:
    import yaml

    from components.errors import InputError
    from flows.masks import AugmentMasksParams, augment_masks_flow

    fields: dict = {}
    if a.config_file:
        try:
            fields = yaml.safe_load(Path(a.config_file).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as err:
            raise InputError(f"augment-masks --config {a.config_file}: cannot read a YAML mapping of "
                             f"MaskAugmentConfig fields ({err})") from None
        if not isinstance(fields, dict):
            raise InputError(f"augment-masks --config {a.config_file}: expected a YAML mapping of MaskAugmentConfig "
                             f"fields, found a {type(fields).__name__}")
    out = augment_masks_flow(AugmentMasksParams(**v[""], config={**fields, **v["config"]}))
    print(out["report"])
    for key in ("features", "montage"):
        if out.get(key):
            print(f"{key}: {out[key]}")
    return 0 if out["n_ok"] > 0 else 1


def _train_flags() -> tuple[Flags, ...]:
    from flows.synthesis import TrainSynthesizerParams

    return (Flags(TrainSynthesizerParams, skip=("config",), rename={"track": "mlflow"}),)


def _train(a: argparse.Namespace, v: Values) -> int:
    from components.backends import get_synthesizer
    from components.errors import InputError
    from flows.synthesis import TrainSynthesizerParams, train_synthesizer_flow

    params = TrainSynthesizerParams(**v[""])
    try:
        get_synthesizer(params.backend).check_profile(params.profile)  # a typo'd profile answers before the flow
    except InputError as err:
        raise InputError(f"train-synthesizer --profile {params.profile}: {err}") from None
    out = train_synthesizer_flow(params)
    print(out["line"])
    print(f"training time: {out['train_seconds']:.1f} s (training steps), {out['seconds']:.1f} s (this call)")
    if out.get("montage"):
        print(f"montage: {out['montage']}")
    return 0


def _synthesize_flags() -> tuple[Flags, ...]:
    from components.synthesis.config import SynthesizeConfig
    from flows.synthesis import SynthesizeParams

    return (Flags(SynthesizeParams, skip=("config",)), Flags(SynthesizeConfig, "config"))


def _synthesize(a: argparse.Namespace, v: Values) -> int:
    from flows.synthesis import SynthesizeParams, synthesize_flow

    return _dataset_lines(synthesize_flow(SynthesizeParams(**v[""], config=v["config"])))


# --------------------------------------------------------------------------- metrics
def _eval_synthesis_flags() -> tuple[Flags, ...]:
    from components.metrics.synthesis import SynthesisEvalConfig
    from flows.metrics import SynthesisEvalParams

    return (Flags(SynthesisEvalParams, skip=("config",)),
            Flags(SynthesisEvalConfig, "config", only=("modalities", "max_slices", "max_cases", "real_split",
                                                       "msssim_pairs", "seed", "device", "threads")))


def _evaluate_synthesis(a: argparse.Namespace, v: Values) -> int:
    from flows.metrics import SynthesisEvalParams, evaluate_synthesis_flow

    p = SynthesisEvalParams(**v[""], config=v["config"])
    out = evaluate_synthesis_flow(p)
    print(f"{p.synthetic} vs {p.real} (split {out['info']['real_split']}, {out['info']['n_real_cases']} cases): "
          "metric, value (std) [n_real / n_synthetic] extractor")
    for r in out["rows"]:
        std = "" if r["std"] is None or math.isnan(r["std"]) else f" ({r['std']:.4g})"
        value = "nan" if math.isnan(r["value"]) else f"{r['value']:.4g}"
        n_other = f"{r.get('n_slices') or r.get('n_volumes')} real ref" if r["metric"].endswith("_floor") else r["n_synthetic"]
        print(f"  {r['metric']:<32} {value}{std} [{r['n_real']} / {n_other}] {r['extractor']}")
    print(f"report: {out['json']} and {out['csv']} ({out['info']['seconds']:.1f} s)")
    return 0


class SegmentationOptions(BaseModel):
    """What evaluate-segmentation takes besides the flow's params (the config is built from a preset)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    label_scheme: str | None = Field(None, description="label scheme of ground truth and predictions; regions come "
                                     "from it (default: the dataset's scheme when --gt is a dataset; required for a "
                                     "folder)")
    preset: str = Field("brats2023", description="scoring preset (docs/scoring.md): brats2023 (lesion-wise, dilation 3, "
                        "lesions <= 50 mm^3 dropped, penalty 374), brats2024 (lesion-wise, penalty 337, thresholds "
                        "ET 10 / others 20 mm^3) or brats2025 (BraTS 2025 scorer via panoptica: global Dice/HD95/NSD, "
                        "PQ/SQ/RQ, lesion tp/fp/fn)")
    workers: int = Field(2, ge=1, description="cases scored in parallel")


def _eval_segmentation_flags() -> tuple[Flags, ...]:
    from flows.metrics import SegmentationEvalParams

    return (Flags(SegmentationEvalParams, skip=("config",)), Flags(SegmentationOptions, "options"))


def _evaluate_segmentation(a: argparse.Namespace, v: Values) -> int:
    from components.metrics.segmentation import SegmentationError, SegmentationEvalConfig
    from flows.metrics import SegmentationEvalParams, evaluate_segmentation_flow

    opts = SegmentationOptions(**v["options"])
    top = v[""]
    scheme = opts.label_scheme
    if scheme is None:
        if Path(top["gt"]).is_dir():
            raise SegmentationError(f"evaluate-segmentation --gt {top['gt']} is a folder: pass --label-scheme "
                                    "(e.g. brats2023)")
        from data_catalog import open_dataset

        scheme = open_dataset(top.get("workspace", "workspace"), top["gt"]).info["label_scheme"]
    cfg = SegmentationEvalConfig.from_preset(scheme, opts.preset, workers=opts.workers)
    out = evaluate_segmentation_flow(SegmentationEvalParams(**top, config=cfg))
    for pr in out["problems"]:
        print(f"  skipped {Path(pr['file']).name}: {pr['reason']}")
    print(f"{out['n_cases']} cases scored ({opts.preset} lesion-wise, scheme {scheme}); per region mean (std):")
    print(f"  {'region':<6} {'n':>4} {'dice':>15} {'hd95 mm':>17} {'assd mm':>17} {'lw_dice':>15} {'lw_hd95':>17}")
    for r in out["summary"]:
        cells = " ".join(f"{_fmt(r[f'{c}_mean'], w)} ({_fmt(r[f'{c}_std'], w)})" for c, w in
                         (("dice", 3), ("hd95", 2), ("assd", 2), ("lw_dice", 3), ("lw_hd95", 2)))
        print(f"  {r['region']:<6} {r['n']:>4} {cells}")
    print(f"per-case scores: {out['csv']}  (config, problems, means: {out['json']})")
    return 0 if out["n_cases"] > 0 else 1


def _fmt(x: float | None, digits: int) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


# --------------------------------------------------------------------------- export and ablation
MIX_OPTIONS = ("ratios", "seeds", "synthetic_only", "real_fraction", "subset_seed", "high_quality")


def _export_flags() -> tuple[Flags, ...]:
    from components.ablation import AblationConfig
    from flows.ablation import ExportParams

    return (Flags(ExportParams, skip=("mix",), defaults={"format": None}, help={"format": "(required without --mix)"}),
            Flags(AblationConfig, "mix", only=MIX_OPTIONS))


def _export_extra(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mix", dest="export_mix", action="store_true",
                   help="export the ablation's mixes of --dataset and --synthetic (chosen by the ratio, seed and "
                        "subset options, which mean what they mean for `ablation`)")
    p.add_argument("--verify", action="store_true", help="nnunet: run nnU-Net's own dataset integrity check after writing")


def _export(a: argparse.Namespace, v: Values) -> int:
    import json

    from components.ablation import AblationConfig
    from components.export import ExportError, verify_nnunet_dataset
    from flows.ablation import ExportParams, check_export, export_flow

    top, given = dict(v[""]), v["mix"]
    if not a.export_mix:
        if given or top.get("synthetic"):
            flags = ", ".join("--" + k.replace("_", "-") for k in [*given, *(["synthetic"] if top.get("synthetic") else [])])
            raise ExportError(f"export {flags}: expected --mix with these options (they choose the ablation's mixes)")
        if top.get("format") is None:
            raise ExportError("export --format: missing; expected brats or nnunet (or --mix for the ablation's mixes)")
    params = ExportParams(**{**top, "format": top.get("format") or "nnunet"},
                          mix=AblationConfig(**given) if a.export_mix else None)
    real, _ = check_export(params)  # before Prefect starts: datasets, grid and leak checks in one sentence
    out = export_flow(params)
    if not a.export_mix:
        print(f"exported {params.dataset} ({params.format}) -> {out}")
        if a.verify and params.format == "nnunet":
            verify_nnunet_dataset(out)  # outside the flow: nnU-Net's worker pool and Prefect's signal handlers
            print("nnU-Net dataset integrity check passed")
        return 0
    info = json.loads((Path(out) / "mixes.json").read_text(encoding="utf-8"))
    print(f"exported {len(info['datasets'])} ablation mixes of {params.dataset} + "
          f"{params.synthetic or 'no synthetic set'} -> {out} (nnU-Net raw folder; case lists in "
          f"{Path(out) / 'mixes.csv'})")
    for p in info["plans"]:
        print(f"  {p['name']:<16} {info['datasets'][p['name']]}: {len(p['real_ids'])} real + "
              f"{len(p['synthetic_ids'])} synthetic training cases, {len(p['test_ids'])} test cases")
    if a.verify:
        for folder in info["datasets"].values():
            verify_nnunet_dataset(Path(out) / folder)
        print(f"nnU-Net dataset integrity checks of {len(info['datasets'])} datasets passed")
    first = next(iter(info["datasets"].values()))
    print(f"score predictions: gliosynth evaluate-segmentation --gt {Path(out) / first / 'labelsTs'} "
          f"--pred <predictions> --label-scheme {real.label_scheme.name} --out scores.csv")
    return 0


def _ablation_flags() -> tuple[Flags, ...]:
    from components.ablation import AblationConfig
    from flows.ablation import AblationParams
    from flows.runners import RunnerConfig

    return (Flags(AblationParams, skip=("config", "synthesis_metrics")),
            Flags(AblationConfig, "config", skip=("montage_cases",)),
            Flags(RunnerConfig, "runner", skip=("dask_processes",), rename={"kind": "task_runner"}))


def _ablation(a: argparse.Namespace, v: Values) -> int:
    from flows.ablation import AblationParams, ablation_flow, check_ablation
    from flows.runners import RunnerConfig, make_task_runner

    runner_cfg = RunnerConfig(**v["runner"])
    params = AblationParams(**v[""], config=v["config"])
    check_ablation(params)  # before Prefect starts: a grid the data cannot fill fails in one sentence
    out = ablation_flow.with_options(task_runner=make_task_runner(runner_cfg))(params)
    print_ablation_result(out)
    return 0 if out["n_ok"] > 0 else 1


def print_ablation_result(out: dict) -> None:
    """The effect table first (what the ablation answers), then where everything else is."""
    import pandas as pd

    from components.dashboard import dashboard_hint

    table = pd.DataFrame(out["table"])
    cols = [c for c in ("config", "status", "segmenter", "synthesizer", "ratio", "seed", "n_real", "n_synthetic",
                        "dice_WT", "dice_TC", "dice_ET") if c in table]
    print("configurations:")
    print(table[cols].to_string(index=False))
    print("\neffect of synthetic cases: paired difference to ratio 0 on the same test cases, mean over seeds, "
          "95 % bootstrap interval, Wilcoxon p:")
    print("\n".join(out["effect_lines"]))
    print(f"\neffect table: {out['effect_csv']}\nsummary: {out['summary_csv']}\nplot: {out['plot']}")
    for line in dashboard_hint(out["workspace"], out["parent_run_id"]):
        print(line)


# --------------------------------------------------------------------------- the whole DAG, serving, the dashboard
def floor_lines(csv_path: str) -> list[str]:
    """FID and KID per modality beside the real-vs-real floor at the same number of slices."""
    import pandas as pd

    t = pd.read_csv(csv_path).set_index("metric")
    lines = []
    for name in (m for m in t.index if m.startswith(("fid2d_", "kid_")) and not m.endswith("_floor")):
        v = float(t.loc[name, "value"])
        floor = float(t.loc[f"{name}_floor", "value"]) if f"{name}_floor" in t.index else math.nan
        n = t.loc[name, "n_slices"] if "n_slices" in t.columns else math.nan
        n_txt = f", N={int(n)} slices" if isinstance(n, (int, float)) and math.isfinite(n) else ""
        lines.append(f"{name} {v:.4g} (real-vs-real floor {floor:.4g}{n_txt})")
    return lines


def _pipeline(a: argparse.Namespace, v: Values) -> int:
    import pandas as pd

    from components.dashboard import dashboard_hint
    from flows.pipeline import pipeline_flow

    opts = PipelineOptions(**v[""])
    out = pipeline_flow(config_path=opts.config, workspace=opts.workspace)
    for arm in out["arms"]:
        table = pd.DataFrame(arm["table"])
        cols = [c for c in ("config", "status", "segmenter", "synthesizer", "ratio", "seed", "n_real", "n_synthetic",
                            "dice_WT", "dice_TC", "dice_ET", "hd95_WT_mm") if c in table]
        print(f"\nablation {arm['ablation']} ({arm['fraction']:.0%} of the real training cases; held-out real test "
              "cases; on the phantom a pipeline check, not a BraTS result):")
        print(table[cols].to_string(index=False))
        print("\neffect of synthetic cases: paired difference to ratio 0 on the same test cases, mean over seeds, "
              "95 % bootstrap interval, Wilcoxon p:")
        print("\n".join(arm["effect_lines"]))
    print("\nsynthetic sets against the real test split (each score beside its real-vs-real floor at the same N):")
    for arm in out["arms"]:
        by_synthesizer = arm.get("synthesis_scores_by_synthesizer") or {"": arm["synthesis_scores"]}
        for synthesizer, csv_path in by_synthesizer.items():
            who = f"{arm['ablation']}, {synthesizer}" if len(by_synthesizer) > 1 else arm["ablation"]
            for line in floor_lines(csv_path):
                print(f"  {who}: {line}")
    for arm in out["arms"]:
        for line in own_score_lines(arm.get("synthesizer_own_scores") or {}, arm.get("mask_scores") or {}):
            print(f"  {arm['ablation']}, {line}")
    print("\nwhere to look:")
    for m in out["montages"]:
        print(f"  picture: {m}")
    for csv_path in dict.fromkeys(p for arm in out["arms"] for p in (arm.get("synthesis_scores_by_synthesizer") or {
            "": arm["synthesis_scores"]}).values()):
        print(f"  synthesis scores: {csv_path}")
    for arm in out["arms"]:
        print(f"  ablation {arm['ablation']}: {arm['effect_csv']} (effects), {arm['summary_csv']} (configurations)")
    for arm in out["arms"]:
        for line in dashboard_hint(out["workspace"], arm["parent_run_id"]):
            print(f"  {line}")
    return 0 if any(r.get("status") == "ok" for r in out["ablation_table"]) else 1


def own_score_lines(by_synthesizer: dict[str, dict[str, float]], masks: dict[str, float]) -> list[str]:
    """One line per synthesizer with scores of its own (sbldm: how well the generated masks follow the requested
    features, and how many pass the plausibility checks), and one for the mask sources' own scores."""
    lines = []
    for arm, m in by_synthesizer.items():
        parts = [f"{k.removeprefix('mask_').replace('_', ' ')} {m[k]:.0%}" for k in ("mask_pass_rate",
                 "mask_request_ok_rate") if k in m]
        parts += [f"|error| {k.removeprefix('ctrl_err_')} {v:,.1f}" for k, v in m.items()
                  if k.startswith("ctrl_err_") and k.endswith("_wt")]
        if parts:
            lines.append(f"{arm}: " + "; ".join(parts) + " (mm, mm^2, mm^3; every generated mask)")
    if masks:
        lines.append("mask sources: " + "; ".join(f"{k.removeprefix('masks_')} {v:.3g}" for k, v in masks.items()))
    return lines


def _serve(a: argparse.Namespace, v: Values) -> int:
    from flows.serve import serve_forever

    opts = ServeOptions(**v[""])
    return serve_forever(opts.port, opts.workspace)


def _dashboard_link(a: argparse.Namespace, v: Values) -> int:
    from components.dashboard import CHROMIUM_NAMES, find_chromium, link_lines, screenshots
    from components.errors import InputError

    opts = DashboardOptions(**v[""])
    ws = Path(opts.workspace)
    for line in link_lines(ws, opts.parent_run, opts.host, opts.port):
        print(line)
    if opts.screenshot:
        if find_chromium() is None:
            raise InputError(f"dashboard-link --screenshot: no Chromium found (looked for {', '.join(CHROMIUM_NAMES)} "
                             "on PATH and $CHROMIUM); on Debian: apt-get install chromium")
        for path in screenshots(ws, opts.screenshot, opts.parent_run, window=opts.window):
            print(f"screenshot: {path}")
    return 0


def _own(model: type[BaseModel]) -> Callable[[], tuple[Flags, ...]]:
    return lambda: (Flags(model),)


VERBS: dict[str, Verb] = {v.name: v for v in (
    Verb("phantom", "make the embedded BraTS-like phantom dataset (offline, from the MNI152 template)",
         "Build BraTS-like cases from the MNI152 template shipped in nilearn's wheel and write them as a catalogued "
         "dataset of kind 'phantom' with a PNG montage. Deterministic for a seed. For pipeline checks, not for claims "
         "about BraTS.", "flows/datasets.py phantom_flow", "components/phantom.py", _phantom_flags, _phantom,
         reads={"workspace": False}),
    Verb("ingest", "validate a BraTS/MSD release and write it as a canonical catalogued dataset",
         "Detect the release layout under SOURCE (searched recursively: BraTS 2021, BraTS 2023+ GLI/MEN/MET/SSA/PED, "
         "BraTS 2024 post-treatment, MSD Task01 4-D), validate every case and write the canonical dataset "
         "(t1n/t1c/t2w/t2f + seg, labels in brats2023 or brats2024_post, affines kept). Bad cases are quarantined "
         "with a reason, never dropped. Exit status 0 when at least one case is ok.",
         "flows/datasets.py ingest_flow", "components/brats/ingest.py", _ingest_flags, _ingest,
         reads={"folders": ("source",), "workspace": False}),
    Verb("ingest-synthetic", "bring your own synthetic set: validate cases made by another tool and catalogue them "
         "for the ablation",
         "Validate the synthetic cases under SOURCE as `ingest` validates a release and write them as a catalogued "
         "synthetic dataset linked to the real dataset REAL. LINKS is a CSV with one row per case: case_id (the case "
         "folder's name), source_case (the real case it was made from); optional mask_case and quality_score. A case "
         "linked to a test-split case, to a case REAL does not have, or not linked is quarantined with its reason, as "
         "is an invalid case. The generator's training cases are recorded for the ablation's leak check. Exit status "
         "0 when at least one case is ok.", "flows/datasets.py ingest_synthetic_flow", "components/foreign.py",
         _ingest_synthetic_flags, _ingest_synthetic, reads={"datasets": ("real",), "folders": ("source",)}),
    Verb("datasets", "list the datasets in the workspace catalog",
         "List every catalogued dataset with its kind, label scheme and case counts.", "(none: reads the catalog)",
         "data_catalog/__init__.py", _own(WorkspaceOptions), _datasets, reads={}),
    Verb("augment-masks", "derive head labels and write plausibility-checked augmented tumour masks",
         "From the segmentations of dataset SOURCE: derive a head label per case from its four modalities, then draw "
         "augmented masks (left-right flip, whole-head affine, tumour elastic deformation, tumour scaling, relocation "
         "into the same or another same-split head), keep only candidates that pass the plausibility checks and write "
         "them as a catalogued dataset of kind 'masks' with tumour features per region, features.png and montage.png. "
         "Each mask keeps its source's split; every mask's parameters are stored in the manifest for exact replay.",
         "flows/masks.py augment_masks_flow", "components/masks/dataset.py", _masks_flags, _augment_masks,
         reads={"datasets": ("source",)}, extra=_masks_config_flag),
    Verb("train-synthesizer", "train a mask-conditioned diffusion model on a dataset's train split",
         "Train the synthesizer on the train-split cases of DATASET (a 3-D DDPM: MONAI DiffusionModelUNet with the "
         "one-hot mask concatenated to the noisy 4-modality image). The model lives in <workspace>/models/<name>/ "
         "(config.json, checkpoints/, ema.pt, stats.json, train_log.csv, montage.png); the loss curve and a "
         "real-vs-synthetic montage go to MLflow. A profile whose grid cannot hold the dataset's heads is refused "
         "before the first step.", "flows/synthesis.py train_synthesizer_flow", "components/synthesis/training.py",
         _train_flags, _train, reads={"datasets": ("dataset",)}),
    Verb("synthesize", "sample a synthetic dataset from a trained model and a set of masks",
         "Generate four modalities for every ok mask of MASKS (a masks dataset, or a real/phantom dataset whose segs "
         "are used) with a trained model, and write a dataset of kind 'synthetic' (the mask's seg and head, the mask's "
         "affine, zero outside the head, a quality score per case). A killed run resumes: cases already written are "
         "kept. A model without a trained checkpoint is refused.", "flows/synthesis.py synthesize_flow",
         "components/synthesis/writer.py", _synthesize_flags, _synthesize,
         reads={"datasets": ("masks",), "models": ("model",)}),
    Verb("evaluate-synthesis", "score a synthetic dataset against a real one (FID/KID 2.5-D, FD-rand3D, MS-SSIM, "
         "PSNR/SSIM)",
         "Per modality: FID and KID on brain slices of the three planes (standard FID Inception-v3), a Frechet "
         "distance on a fixed-seed random 3-D network, MS-SSIM fidelity and diversity beside the real-vs-real value, "
         "and PSNR/SSIM inside the brain for paired cases, against the real dataset's test split by default. FID, KID "
         "and FD depend on the sample size: each comes with a real-vs-real floor (<metric>_floor) at the synthetic "
         "set's exact N. Every value is written with its extractor and sample counts (JSON + CSV).",
         "flows/metrics.py evaluate_synthesis_flow", "components/metrics/synthesis.py", _eval_synthesis_flags,
         _evaluate_synthesis, reads={"datasets": ("real", "synthetic")}),
    Verb("evaluate-segmentation", "score predicted segmentations against ground truth (Dice, HD95, ASSD, BraTS "
         "lesion-wise)",
         "Score every prediction in PRED against its ground truth, per case and region of the label scheme: Dice, "
         "HD95 and ASSD in mm (voxel spacing applied; both empty -> Dice 1, HD95 0; one empty -> Dice 0, HD95 374) "
         "and BraTS lesion-wise Dice and HD95. Files match by case id: <case_id>.nii.gz (nnU-Net) or "
         "<case_id>-seg.nii.gz. Unmatched, unreadable or mis-shaped files are reported, never fatal. Writes one CSV "
         "row per case and region and a JSON beside it.", "flows/metrics.py evaluate_segmentation_flow",
         "components/metrics/segmentation.py", _eval_segmentation_flags, _evaluate_segmentation,
         reads={"datasets_or_folders": ("gt",), "folders": ("pred",), "workspace": False}),
    Verb("export", "export a dataset as a BraTS 2023-layout release or an nnU-Net v2 raw dataset, or the ablation's "
         "exact mixes (--mix) to train another segmenter on",
         "Write a catalogued dataset for sharing (--format brats: <case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz with "
         "PROVENANCE.md, manifest.csv and dataset.json) or for nnU-Net (--format nnunet: Dataset<id>_<name>/imagesTr, "
         "labelsTr, region-based dataset.json; the test split goes to imagesTs/labelsTs). Files are linked or copied "
         "byte for byte, so affines are preserved. With --mix, write the configurations `ablation` would train for the "
         "same options, without training: one nnU-Net dataset per configuration, mixes.csv, mixes.json and README.md; "
         "the mixes pass the ablation's leak checks first.", "flows/ablation.py export_flow", "components/export.py",
         _export_flags, _export, reads={"datasets": ("dataset", "synthetic")}, extra=_export_extra),
    Verb("ablation", "train segmenters (nnU-Net by default) on real+synthetic mixes over ratios; score on held-out "
         "real cases; log to MLflow",
         "For every ratio (and seed) build a mix of the real dataset's train split and synthetic cases (only those "
         "derived from train-split masks, by a generator that learnt from them: checked), train each segmenter "
         "(--segmenters) on it, predict the real test split and score it. A synthetic set that combines several "
         "synthesizers (the pipeline's `synthesizers:`) is crossed too: each ratio once per synthesizer. Each ratio is compared with ratio 0 of the same seed "
         "on the same test cases (paired differences, bootstrap intervals). One MLflow parent run, one child run per "
         "configuration; summary, effect and per-case CSVs and a Dice-vs-ratio plot.",
         "flows/ablation.py ablation_flow", "components/ablation.py", _ablation_flags, _ablation,
         reads={"datasets": ("real", "synthetic")}),
    Verb("pipeline", "run the whole DAG from one config file (configs/demo.yaml, configs/compare.yaml, "
         "configs/brats-gpu.yaml)",
         "phantom or ingestion -> mask augmentation -> synthesizer training (one or several) -> synthesis -> synthesis "
         "scores -> export -> ratio ablation (one or several segmenters) -> MLflow. Every key of the config is checked before anything runs; unchanged "
         "stages are cache hits.", "flows/pipeline.py pipeline_flow", "every stage above", _own(PipelineOptions),
         _pipeline, reads={"workspace": False}),
    Verb("serve", "start a local Prefect server and worker on 127.0.0.1 and deploy prefect.yaml",
         "Start `prefect server` on 127.0.0.1 over the workspace's Prefect home (<workspace>/.prefect), create the "
         "process work pool, deploy every deployment of prefect.yaml (writing to this workspace) and run a worker "
         "until interrupted. While it runs, command-line runs on the workspace report to it and "
         "`PREFECT_HOME=<workspace>/.prefect prefect deployment run ...` works from any shell.",
         "(none: a server and a worker)", "flows/serve.py", _own(ServeOptions), _serve, reads={"workspace": False}),
    Verb("dashboard-link", "print the MLflow UI link that compares the latest ablation's configurations",
         "Print the links `make dashboard` serves: MLflow's compare page for the latest ablation's configurations, its "
         "parent run (description, effect table, Dice-vs-ratio plot) and the experiment's runs. With --screenshot, "
         "start a temporary MLflow server over the workspace store and save both pages as PNG with headless Chromium.",
         "(none: reads the MLflow store)", "components/dashboard.py", _own(DashboardOptions), _dashboard_link,
         reads={"workspace": False}),
)}
