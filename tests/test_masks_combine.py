"""Masks of two sources (augment and the label-map model ``ldm``) combined into one masks dataset that a
synthesizer reads as it reads one source's; the pipeline config's ``masks.also`` that asks for it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from components.backends import get_mask_source, get_synthesizer
from components.io import sha256_file
from components.masks import SOURCE_FEATURES, CheckConfig, MaskAugmentConfig
from components.masks.combine import MASK_SOURCE_COLUMN, CombineMasksError, combine_masks
from components.synthesis.config import SynthesizeConfig
from data_catalog import STATUS_OK, open_dataset
from tests import builders as b
from tests.test_backends import toy_backends  # noqa: F401 - the fixture

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parents[1]


def test_two_mask_sources_combine_into_one_dataset_every_synthesizer_reads(tmp_path):
    from components.labelldm.masks import LdmMasksConfig

    ws = tmp_path / "ws"
    b.write_catalog_dataset(ws, "src", n_cases=6)
    get_mask_source("augment").make(ws, "src", "m-augment", MaskAugmentConfig(per_case=1, seed=0, splits=("train",)))
    get_mask_source("ldm").make(ws, "src", "m-ldm", LdmMasksConfig(
        profile="tiny", per_case=1, seed=0, checks=CheckConfig(volume_mm3_wt=(20.0, 1e6), nesting_tolerance=0.5)))
    aug, ldm = open_dataset(ws, "m-augment"), open_dataset(ws, "m-ldm")
    combined = combine_masks(ws, "m", {"augment": "m-augment", "ldm": "m-ldm"})
    man = combined.manifest
    assert sorted(man["case_id"]) == sorted([*aug.manifest["case_id"], *ldm.manifest["case_id"]])
    assert man[MASK_SOURCE_COLUMN].value_counts().to_dict() == {"augment": len(aug.manifest), "ldm": len(ldm.manifest)}
    ok = man[man["status"] == STATUS_OK]
    assert len(ok) >= 1
    for _, r in ok.iterrows():  # the same bytes as the part's files
        part = aug if r[MASK_SOURCE_COLUMN] == "augment" else ldm
        for key in ("seg", "head"):
            assert sha256_file(combined.path(r["case_id"], key)) == sha256_file(part.path(r["case_id"], key)) == r[f"sha256_{key}"]
    src = pd.read_parquet(combined.root / SOURCE_FEATURES)
    assert set(src["case_id"]) == set(pd.read_parquet(aug.root / SOURCE_FEATURES)["case_id"]) | set(
        pd.read_parquet(ldm.root / SOURCE_FEATURES)["case_id"])
    assert all((combined.root / p).is_file() for p in src["head"])
    assert combined.info["config"] == aug.info["config"]  # the primary's check bounds, which synthesizers reuse
    assert set(combined.info["parts"]) == {"augment", "ldm"} and "generation" in combined.info["parts"]["ldm"]

    ddpm = get_synthesizer("ddpm")  # a synthesizer draws from both sources' masks
    with b.torch_threads(1):
        ddpm.train(ws, "src", "g", ddpm.resolve_config("tiny", steps=1, config=b.tiny_synth_config(montage_cases=0)),
                   track=False)
        out = ddpm.synthesize(ws, "g", "m", "syn", SynthesizeConfig(device="cpu", montage_cases=0, steps=2))
    syn = open_dataset(ws, "syn")
    assert out.n_ok == len(ok) and set(syn.ok_cases()["mask_case"]) == set(ok["case_id"])

    with pytest.raises(CombineMasksError, match="in both"):
        combine_masks(ws, "m2", {"a": "m-augment", "b": "m-augment"})
    with pytest.raises(CombineMasksError, match="not masks datasets"):
        combine_masks(ws, "m3", {"augment": "m-augment", "real": "src"})


def test_the_pipeline_config_takes_more_mask_sources_once_each(tmp_path):
    from flows.pipeline_config import ConfigError, load_config

    cfg = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    cfg["masks"]["also"] = [{"source": "ldm", "config": {"profile": "cpu-demo", "per_case": 1, "seed": 0}}]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert [s for s, _ in load_config(path).masks.sources] == ["augment", "ldm"]
    for also, says in (([{"source": "augment"}], "each mask source once"),
                       ([{"source": "ldm", "config": {"profile": "no-such-profile"}}], "no-such-profile"),
                       ([{"source": "ldm", "config": {"per_cas": 1}}], "per_cas")):
        cfg["masks"]["also"] = also
        path.write_text(yaml.safe_dump(cfg))
        with pytest.raises(ConfigError, match=says):
            load_config(path)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.usefixtures("prefect_harness", "toy_backends")
def test_a_pipeline_with_ldm_masks_beside_augment(tmp_path):
    import mlflow

    from components.labelldm.config import PROFILES_DIR
    from components.tracking import tracking_uri
    from flows.pipeline import pipeline_flow
    from tests.test_pipeline import TINY

    prof = yaml.safe_load((PROFILES_DIR / "tiny.yaml").read_text())
    prof["data"]["shape"] = [24, 32, 24]  # the 8 mm phantom's heads (tiny's 16^3 would cut them)
    profile = tmp_path / "labels.yaml"
    profile.write_text(yaml.safe_dump(prof))
    cfg = {"workspace": str(tmp_path / "ws"), **TINY, "synthesizer": {"name": "s", "backend": "toy", "profile": "default"}}
    cfg["masks"] = {**TINY["masks"], "also": [{"source": "ldm", "config": {
        "profile": str(profile), "per_case": 1, "seed": 0,
        "checks": {"volume_mm3_wt": [20.0, 1.0e7], "nesting_tolerance": 0.5}}}]}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = pipeline_flow(config_path=str(path))
    ws = tmp_path / "ws"
    masks = open_dataset(ws, "m")
    assert set(masks.manifest[MASK_SOURCE_COLUMN]) == {"augment", "ldm"}
    assert set(masks.info["parts"]) == {"augment", "ldm"}
    syn = open_dataset(ws, "syn").ok_cases()
    assert set(syn["mask_case"]) <= set(masks.ok_cases()["case_id"])
    assert [r["status"] for r in out["ablation_table"]] == ["ok", "ok"]
    client = mlflow.MlflowClient(tracking_uri=tracking_uri(ws))
    parent = client.get_run(out["parent_run_id"])
    ldm = open_dataset(ws, "m-ldm").manifest
    assert parent.data.metrics["masks_ldm_mask_pass_rate"] == pytest.approx((ldm["status"] == STATUS_OK).mean())
