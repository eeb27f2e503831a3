"""Backends plug in by name: a toy synthesizer and toy segmenters, registered here at test time, run
through the flows, the ablation's planning and leak checks, a crossed ablation and the whole
pipeline, with no change to a flow or a task."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from pydantic import BaseModel

from components.backends import (
    MASK_SOURCES,
    SEGMENTERS,
    SYNTHESIZERS,
    FittedSegmenter,
    ModelSummary,
    get_mask_source,
    get_segmenter,
    get_synthesizer,
    register_segmenter,
    register_synthesizer,
)
from components.config_base import FrozenModel
from components.errors import InputError
from components.io import load_nifti, save_nifti, sha256_file, write_json_atomic
from data_catalog import MODALITIES, open_dataset
from tests import builders as b


# --------------------------------------------------------------------------- a toy synthesizer
class ToyConfig(FrozenModel):
    profile: str = "default"
    noise: float = 0.05


class ToySynthesizer:
    """Training records each modality's mean intensity per label (0: healthy head tissue) over the
    training cases; synthesis fills each mask's labels with those means plus seeded noise."""

    def check_profile(self, profile: str) -> None:
        if profile != "default":
            raise InputError(f"unknown toy profile {profile!r}: expected 'default'")

    def resolve_config(self, profile: str, steps: int | None = None, config: BaseModel | None = None) -> ToyConfig:
        self.check_profile(profile)
        return ToyConfig(profile=profile)

    def _card(self, workspace: str | Path, name: str) -> Path:
        return Path(workspace) / "models" / name / "toy.json"

    def train(self, workspace: str | Path, dataset: str, name: str, config: BaseModel, *,
              resume: bool | str = False, track: bool = True) -> ModelSummary:
        t0 = time.perf_counter()
        ds = open_dataset(workspace, dataset)
        cases = ds.ok_cases("train")["case_id"].tolist()
        sums: dict[str, dict[int, list[float]]] = {m: {} for m in MODALITIES}
        for cid in cases:
            seg = load_nifti(ds.path(cid, "seg"))[0]
            images = {m: load_nifti(ds.path(cid, m))[0] for m in MODALITIES}
            head = np.any([images[m] > 0 for m in MODALITIES], axis=0) | (seg > 0)
            for m in MODALITIES:
                for lab in np.unique(seg[head]):
                    s = sums[m].setdefault(int(lab), [0.0, 0.0])
                    s[0] += float(images[m][head & (seg == lab)].sum())
                    s[1] += float((head & (seg == lab)).sum())
        means = {m: {str(lab): total / n for lab, (total, n) in v.items()} for m, v in sums.items()}
        card = self._card(workspace, name)
        write_json_atomic(card, {"dataset": ds.name, "train_cases": cases, "means": means,
                                 "config": config.model_dump(mode="json")})
        dt = time.perf_counter() - t0
        return ModelSummary(name=name, model_dir=card.parent, seconds=dt, train_seconds=dt, note="toy means")

    def model_files(self, workspace: str | Path, name: str) -> list[Path]:
        return [self._card(workspace, name)]

    def weights_digest(self, workspace: str | Path, model: str) -> str:
        card = self._card(workspace, model)
        if not card.is_file():
            raise InputError(f"no toy model {model!r}: expected {card}")
        return sha256_file(card)

    def synthesize(self, workspace: str | Path, model: str, masks: str, name: str, config: Any):
        from components.synthesis.writer import SynthesisSummary, case_seed, register_synthetic, write_synthetic_case
        from data_catalog import dataset_dir, has_file

        t0 = time.perf_counter()
        card = json.loads(self._card(workspace, model).read_text())
        digest = self.weights_digest(workspace, model)
        mds = open_dataset(workspace, masks)
        cases_dir = dataset_dir(workspace, name) / "cases"
        rows = []
        for _, r in mds.ok_cases().iterrows():
            seg, affine, _ = load_nifti(mds.path(r["case_id"], "seg"))
            head = load_nifti(mds.path(r["case_id"], "head"))[0] > 0 if has_file(r, "head") else seg > 0
            for k in range(config.samples_per_mask):
                seed = case_seed(config.seed, r["case_id"], k)
                rng = np.random.default_rng(seed)
                images = {}
                for m in MODALITIES:
                    mean = np.vectorize(lambda lab, m=m: card["means"][m].get(str(int(lab)), 0.0))(seg)
                    noisy = mean * (1 + card["config"]["noise"] * rng.standard_normal(seg.shape))
                    images[m] = np.where(head, noisy, 0.0).astype(np.float32)
                rows.append(write_synthetic_case(
                    cases_dir, f"{r['case_id']}-syn{k}", images, seg.astype(np.uint8), head, affine, mask_row=r,
                    mask_case=r["case_id"], seed=seed, params=json.dumps({"toy": True, "sample_index": k}),
                    model_digest=digest))
        manifest = pd.DataFrame(rows)
        register_synthetic(workspace, name, manifest, mds, label_scheme=mds.label_scheme.name,
                           config=config.model_dump(mode="json"), model=model, model_digest=digest,
                           generator_dataset=card["dataset"], generator_train_cases=card["train_cases"],
                           note="toy: label means plus noise")
        n = len(manifest)
        dt = time.perf_counter() - t0
        return SynthesisSummary(name=name, model=model, masks=masks, sampler="toy", steps=0, n_cases=n, n_ok=n,
                                n_quarantined=0, n_written=n, n_reused=0, seconds=dt, seconds_per_volume=dt / max(n, 1),
                                path=dataset_dir(workspace, name), montage=None)


# --------------------------------------------------------------------------- toy segmenters
class ThresholdSegmenter:
    """'Fits' a FLAIR threshold (mean + ``k`` std inside the head of its training cases) and
    predicts the whole tumour (label 2) above it."""

    label = "threshold"

    def __init__(self, k: float) -> None:
        self.k = k

    def prepare(self, workspace, ablation, plans, real, synthetic, config) -> dict[str, Any]:
        return {"n_configurations": len(plans)}

    def params(self, plan, config, data: Mapping[str, Any]) -> dict[str, Any]:
        return {"threshold_k": self.k, "device": "cpu"}

    def fit(self, plan, config, data, gpu) -> FittedSegmenter:
        return FittedSegmenter(model_dir=Path("."), train_keys=plan.train_ids, label=f"threshold k={self.k}",
                               record={"threshold_k": self.k})

    def predict(self, model: FittedSegmenter, cases: Mapping[str, Sequence[Path]], out_dir: Path, config, data,
                gpu) -> dict[str, Path]:
        out = {}
        for cid, files in cases.items():
            t2f, affine, _ = load_nifti(files[3])
            inside = t2f[t2f > 0]
            out[cid] = out_dir / f"{cid}.nii.gz"
            save_nifti(out[cid], (t2f > inside.mean() + self.k * inside.std()) * 2, affine, dtype=np.uint8)
        return out


@pytest.fixture
def toy_backends():
    register_synthesizer("toy", ToySynthesizer)
    register_segmenter("thr-a", lambda: ThresholdSegmenter(0.5))
    register_segmenter("thr-b", lambda: ThresholdSegmenter(1.5))
    yield
    SYNTHESIZERS.unregister("toy")
    SEGMENTERS.unregister("thr-a")
    SEGMENTERS.unregister("thr-b")


# --------------------------------------------------------------------------- registries (fast, no Prefect)
def test_an_unknown_backend_is_one_sentence_naming_the_known_ones():
    for get, kind, registry, builtin in ((get_synthesizer, "synthesizer", SYNTHESIZERS, {"ddpm", "ldm", "sbldm"}),
                                         (get_segmenter, "segmenter", SEGMENTERS, {"nnunet", "segresnet", "ldmseg"}),
                                         (get_mask_source, "mask source", MASK_SOURCES, {"augment", "ldm"})):
        assert builtin <= set(registry.names())
        with pytest.raises(InputError) as err:
            get("nope")
        msg = str(err.value)
        assert msg == f"unknown {kind} backend 'nope': known {kind} backends are {', '.join(registry.names())}"


def test_a_name_is_registered_once_unless_replaced(toy_backends):
    with pytest.raises(InputError, match="already registered"):
        register_synthesizer("toy", ToySynthesizer)
    register_synthesizer("toy", ToySynthesizer, replace=True)
    assert isinstance(get_synthesizer("toy"), ToySynthesizer)
    assert "toy" in SYNTHESIZERS.names() and SYNTHESIZERS.names() == sorted(SYNTHESIZERS.names())


def _config_file(tmp_path: Path, **stages: Any) -> Path:
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"data": {"name": "ph", "phantom": {"cases": 6, "spacing": 8.0}}, **stages}))
    return f


def test_the_pipeline_config_refuses_an_unknown_backend_before_anything_runs(tmp_path, toy_backends):
    from flows.pipeline_config import ConfigError, load_config

    with pytest.raises(ConfigError) as err:
        load_config(_config_file(tmp_path, synthesizer={"backend": "nope"}))
    from components.backends import SYNTHESIZERS

    assert "toy" in SYNTHESIZERS.names() and "ddpm" in SYNTHESIZERS.names()
    assert str(err.value) == (f"{tmp_path / 'c.yaml'}: key synthesizer.backend: found 'nope': unknown synthesizer "
                              f"backend 'nope': known synthesizer backends are {', '.join(SYNTHESIZERS.names())}")
    with pytest.raises(ConfigError, match="key ablation.segmenters: .*unknown segmenter backend 'unet9'"):
        load_config(_config_file(tmp_path, ablation={"segmenters": ["nnunet", "unet9"]}))
    with pytest.raises(ConfigError, match="key masks.source: .*unknown mask source backend 'draw'"):
        load_config(_config_file(tmp_path, masks={"source": "draw"}))
    # the profile is the named backend's: the toy's own check answers
    with pytest.raises(ConfigError, match="key synthesizer.profile: .*unknown toy profile 'tiny'"):
        load_config(_config_file(tmp_path, synthesizer={"backend": "toy", "profile": "tiny"}))
    with pytest.raises(ConfigError, match="key synthesizer.profile: .*unknown toy profile 'cpu-demo'"):  # the default
        load_config(_config_file(tmp_path, synthesizer={"backend": "toy"}))
    cfg = load_config(_config_file(tmp_path, synthesizer={"backend": "toy", "profile": "default"},
                                   ablation={"segmenters": ["thr-a", "thr-b"]}))
    assert cfg.synthesizer.backend == "toy" and cfg.ablation.segmenters == ("thr-a", "thr-b")
    default = load_config(_config_file(tmp_path))
    assert (default.synthesizer.backend, default.ablation.segmenters, default.masks.source) == (
        "ddpm", ("nnunet",), "augment")


# --------------------------------------------------------------------------- the toy through the flows
@pytest.fixture
def toy_workspace(tmp_path, prefect_harness, toy_backends):
    """A real dataset, a masks dataset derived from it, a toy model and its synthetic set (through the flows)."""
    from flows.synthesis import SynthesizeParams, TrainSynthesizerParams, synthesize_flow, train_synthesizer_flow

    ws = tmp_path / "ws"
    b.write_catalog_dataset(ws, "real", n_cases=8)
    b.write_catalog_dataset(ws, "masks", n_cases=8, kind="masks")
    model = train_synthesizer_flow(TrainSynthesizerParams(workspace=str(ws), dataset="real", name="toy-model",
                                                          backend="toy", profile="default"))
    syn = synthesize_flow(SynthesizeParams(workspace=str(ws), model="toy-model", masks="masks", name="toy-syn",
                                           backend="toy"))
    return ws, model, syn


def test_a_toy_synthesizer_runs_through_the_flows_and_the_ablation_checks(toy_workspace):
    from components.ablation import AblationConfig, LeakError, MixPlan, check_no_leak, generator_record
    from flows.ablation import AblationParams, check_ablation

    ws, model, syn = toy_workspace
    assert "toy means" in model["line"] and syn["n_ok"] == 8
    real, ds = open_dataset(ws, "real"), open_dataset(ws, "toy-syn")
    # the writer's contract: links to the mask and its real source, the generator's training cases
    assert {"source_case", "mask_case", "seed", "params", "model_digest", "quality_score", "sha256_t1n",
            "head"} <= set(ds.manifest.columns)
    assert set(ds.manifest["source_case"]) <= set(real.manifest["case_id"])
    assert ds.info["generator_dataset"] == "real"
    assert ds.info["generator_train_cases"] == real.ok_cases("train")["case_id"].tolist()
    assert ds.info["model"] == "toy-model" and ds.info["parents"][0]["name"] == "masks"
    cid = ds.ok_cases("train")["case_id"].iloc[0]
    t1c = load_nifti(ds.path(cid, "t1c"))[0]
    assert t1c.max() > 0 and np.all(t1c[load_nifti(ds.path(cid, "head"))[0] == 0] == 0)

    _, _, plans = check_ablation(AblationParams(workspace=str(ws), real="real", synthetic="toy-syn",
                                                config=AblationConfig(ratios=(0, 1))))
    assert [p.name for p in plans] == ["r0-s0", "r1-s0"] and plans[1].n_synthetic == plans[1].n_real
    test_ids = set(real.ok_cases("test")["case_id"])
    src = ds.manifest.set_index("case_id")["source_case"]
    leaky = next(c for c in ds.manifest["case_id"] if src[c] in test_ids)
    bad = MixPlan(**{**plans[1].to_dict(), "synthetic_ids": (*plans[1].synthetic_ids, leaky)})
    with pytest.raises(LeakError, match=leaky):
        check_no_leak(bad, real, ds, generator_record(ws, ds))


def test_one_ablation_crosses_two_segmenters(toy_workspace):
    import mlflow

    from components.ablation import AblationConfig
    from components.tracking import tracking_uri
    from flows.ablation import AblationParams, ablation_flow

    ws, _, _ = toy_workspace
    out = ablation_flow(AblationParams(
        workspace=str(ws), name="cross", real="real", synthetic="toy-syn", segmenters=("thr-a", "thr-b"),
        config=AblationConfig(ratios=(0, 1), schedule="tiny", bootstrap_resamples=200, montage_cases=1)))
    assert out["n_ok"] == 4 and out["n_failed"] == 0
    names = sorted(r["config"] for r in out["table"])
    assert names == ["thr-a-r0-s0", "thr-a-r1-s0", "thr-b-r0-s0", "thr-b-r1-s0"]
    effect = pd.read_csv(out["effect_csv"])
    assert list(zip(effect["segmenter"], effect["ratio"], strict=True)) == [
        ("thr-a", 0.0), ("thr-a", 1.0), ("thr-b", 0.0), ("thr-b", 1.0)]
    assert effect.loc[effect["ratio"] == 0, "delta_dice_WT"].eq(0).all()  # each paired with its own baseline
    assert "thr-b:" in out["effect_lines"]
    client = mlflow.MlflowClient(tracking_uri=tracking_uri(ws))
    parent = client.get_run(out["parent_run_id"])
    assert parent.data.params["segmenters"] == "['thr-a', 'thr-b']"
    assert "effect_thr-a_r1_delta_dice_WT" in parent.data.metrics
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert {(r.data.params["config"], r.data.params["segmenter"]) for r in children} == {
        ("thr-a-r0-s0", "thr-a"), ("thr-a-r1-s0", "thr-a"), ("thr-b-r0-s0", "thr-b"), ("thr-b-r1-s0", "thr-b")}
    mix = json.loads((ws / "ablations" / "cross" / "thr-b-r1-s0" / "mix.json").read_text())
    assert mix["segmenter"] == "thr-b" and mix["threshold_k"] == 1.5


def test_one_ablation_crosses_two_synthesizers_against_one_real_only_baseline(toy_workspace):
    import mlflow

    from components.ablation import AblationConfig, LeakError
    from components.synthetic_sets import combine_synthetic
    from components.tracking import tracking_uri
    from flows.ablation import AblationParams, ablation_flow, check_ablation
    from flows.synthesis import SynthesizeParams, synthesize_flow

    ws, _, _ = toy_workspace
    synthesize_flow(SynthesizeParams(workspace=str(ws), model="toy-model", masks="masks", name="toy-syn-b",
                                     backend="toy", config={"seed": 7}))
    both = combine_synthetic(ws, "both", {"toy": "toy-syn", "toyb": "toy-syn-b"})
    parts = {n: open_dataset(ws, n) for n in ("toy-syn", "toy-syn-b")}
    assert len(both.manifest) == sum(len(d.manifest) for d in parts.values())
    assert set(both.manifest["synthesizer"]) == {"toy", "toyb"} and both.info["synthesizers"] == ["toy", "toyb"]
    cid = "toyb-" + parts["toy-syn-b"].manifest["case_id"].iloc[0]  # ids get the label: the parts share theirs
    assert np.array_equal(load_nifti(both.path(cid, "t1n"))[0],
                          load_nifti(parts["toy-syn-b"].path(cid.removeprefix("toyb-"), "t1n"))[0])
    assert both.info["generator_train_cases"] == parts["toy-syn"].info["generator_train_cases"]

    cfg = AblationConfig(ratios=(0, 1), seeds=(0, 1), schedule="tiny", bootstrap_resamples=200, montage_cases=0)
    _, _, plans = check_ablation(AblationParams(workspace=str(ws), real="real", synthetic="both", config=cfg))
    assert [p.name for p in plans] == ["r0-s0", "toy-r1-s0", "toyb-r1-s0", "r0-s1", "toy-r1-s1", "toyb-r1-s1"]
    for p in plans:  # each synthesizer's configurations take its own cases only
        arm = set(both.manifest.set_index("case_id").loc[list(p.synthetic_ids), "synthesizer"])
        assert arm == ({p.synthesizer} if p.ratio else set())
    # a generator that learnt from a test case is refused through the combined set too
    leaky = parts["toy-syn-b"].info["generator_train_cases"] + open_dataset(ws, "real").ok_cases("test")[
        "case_id"].tolist()[:1]
    info = json.loads((parts["toy-syn-b"].root / "dataset.json").read_text())
    (parts["toy-syn-b"].root / "dataset.json").write_text(json.dumps({**info, "generator_train_cases": leaky}))
    combine_synthetic(ws, "both-leaky", {"toy": "toy-syn", "toyb": "toy-syn-b"})
    with pytest.raises(LeakError, match="learnt from test-split cases"):
        check_ablation(AblationParams(workspace=str(ws), real="real", synthetic="both-leaky", config=cfg))

    out = ablation_flow(AblationParams(workspace=str(ws), name="cross-syn", real="real", synthetic="both",
                                       segmenters=("thr-a", "thr-b"), config=cfg))
    assert out["n_ok"] == 12 and out["n_failed"] == 0
    effect = pd.read_csv(out["effect_csv"], keep_default_na=False)
    assert sorted(zip(effect["segmenter"], effect["synthesizer"], effect["ratio"], strict=True)) == sorted(
        (s, a, r) for s in ("thr-a", "thr-b") for a in ("toy", "toyb") for r in (0.0, 1.0))
    # both synthesizers of a segmenter are paired against the same real-only runs
    base = effect[effect["ratio"] == 0].groupby("segmenter")["dice_WT"].nunique()
    assert (base == 1).all()
    summary = pd.read_csv(out["summary_csv"], keep_default_na=False)
    assert {"segmenter", "synthesizer", "delta_dice_WT"} <= set(summary.columns)
    assert set(summary.loc[summary["ratio"] == 0, "synthesizer"]) == {""}
    assert "thr-a toyb:" in out["effect_lines"]
    client = mlflow.MlflowClient(tracking_uri=tracking_uri(ws))
    parent = client.get_run(out["parent_run_id"])
    assert "effect_thr-b_toyb_r1_delta_dice_WT" in parent.data.metrics
    assert "from synthesizers `toy`, `toyb`" in parent.data.tags["mlflow.note.content"]
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert {(r.data.params["segmenter"], r.data.params["synthesizer"]) for r in children} == {
        (s, a) for s in ("thr-a", "thr-b") for a in ("none", "toy", "toyb")}


def test_an_ablation_scored_with_the_brats2025_preset_logs_pq_and_nsd(toy_workspace):
    import mlflow

    from components.ablation import AblationConfig
    from components.tracking import tracking_uri
    from flows.ablation import AblationParams, ablation_flow

    ws, _, _ = toy_workspace
    out = ablation_flow(AblationParams(
        workspace=str(ws), name="pq", real="real", synthetic="toy-syn", segmenters=("thr-a",),
        config=AblationConfig(ratios=(0, 1), schedule="tiny", bootstrap_resamples=200, montage_cases=0,
                              preset="brats2025")))
    assert out["n_ok"] == 2
    per_case = pd.read_csv(ws / "ablations" / "pq" / "r1-s0" / "per_case.csv")
    assert {"dice", "hd95", "nsd", "pq", "sq", "rq", "tp", "fp", "fn"} <= set(per_case.columns)
    assert set(per_case["preset"]) == {"brats2025"}
    client = mlflow.MlflowClient(tracking_uri=tracking_uri(ws))
    children = client.search_runs([client.get_run(out["parent_run_id"]).info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{out['parent_run_id']}'")
    for run in children:
        m = run.data.metrics
        assert {"dice_WT", "pq_WT", "nsd_WT", "pq_ET", "nsd_ET", "kappa", "accuracy", "f1_ED"} <= set(m)
        assert 0.0 <= m["pq_WT"] <= 1.0 and 0.0 <= m["nsd_WT"] <= 1.0
        assert run.data.params["preset"] == "brats2025"
    assert "effect_r1_delta_dice_WT" in client.get_run(out["parent_run_id"]).data.metrics


def test_a_pipeline_config_crosses_synthesizers_by_label(tmp_path, toy_backends):
    from flows.pipeline_config import ConfigError, load_config

    two = [{"name": "m-a", "backend": "toy", "profile": "default"},
           {"name": "m-b", "backend": "toy", "profile": "default", "label": "toy2"}]
    cfg = load_config(_config_file(tmp_path, synthesizers=two))
    assert [g.arm for g in cfg.generators] == ["toy", "toy2"]
    assert [cfg.synthetic_name(g) for g in cfg.generators] == ["synthetic-toy", "synthetic-toy2"]
    with pytest.raises(ConfigError, match=r"key synthesizers: .*own label .*\['toy', 'toy'\]"):
        load_config(_config_file(tmp_path, synthesizers=[two[0], {**two[1], "label": None}]))
    with pytest.raises(ConfigError, match="either `synthesizer` .* or `synthesizers`"):
        load_config(_config_file(tmp_path, synthesizers=two, synthesizer=two[0]))
    assert load_config(_config_file(tmp_path)).generators[0].backend == "ddpm"


# --------------------------------------------------------------------------- the whole pipeline
@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.usefixtures("prefect_harness", "toy_backends")
def test_a_toy_synthesizer_runs_through_the_pipeline_and_the_nnunet_ablation(tmp_path):
    import mlflow

    from components.tracking import tracking_uri
    from flows.pipeline import pipeline_flow
    from tests.test_pipeline import TINY

    cfg = tmp_path / "toy.yaml"
    cfg.write_text(yaml.safe_dump({"workspace": str(tmp_path / "ws"), **TINY,
                                   "synthesizer": {"name": "s", "backend": "toy", "profile": "default"}}))
    out = pipeline_flow(config_path=str(cfg))
    assert [(r["config"], r["status"]) for r in out["ablation_table"]] == [("r0-s0", "ok"), ("r1-s0", "ok")]
    syn = open_dataset(tmp_path / "ws", "syn")
    assert syn.info["model"] == "s" and syn.info["note"].startswith("toy")
    client = mlflow.MlflowClient(tracking_uri=tracking_uri(tmp_path / "ws"))
    parent = client.get_run(out["parent_run_id"])
    assert parent.data.params["segmenters"] == "['nnunet']"
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{out['parent_run_id']}'")
    assert {r.data.params["segmenter"] for r in children} == {"nnunet"} and len(children) == 2


def test_the_ddpm_backend_records_its_name_on_the_training_run(tmp_path):
    import mlflow

    from components.tracking import tracking_uri

    b.write_catalog_dataset(tmp_path, "tiny", n_cases=2)
    ddpm = get_synthesizer("ddpm")
    cfg = ddpm.resolve_config("tiny", steps=1, config=b.tiny_synth_config(montage_cases=0))
    with b.torch_threads(1):
        r = ddpm.train(tmp_path, "tiny", "m", cfg)
    assert [p.name for p in ddpm.model_files(tmp_path, "m")] == ["ema.pt", "config.json"]
    assert ddpm.weights_digest(tmp_path, "m") == r.weights_sha256
    run = mlflow.MlflowClient(tracking_uri=tracking_uri(tmp_path)).get_run(r.run_id)
    assert run.data.params["backend"] == "ddpm"
