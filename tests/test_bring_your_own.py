"""Bring your own: a synthetic set made by another tool enters the ablation (ingested with a links table,
leak-checked like ours), and the ablation's exact mixes are exported for training elsewhere and scored
with evaluate-segmentation. Real files, real catalog, no training."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from components.ablation import AblationConfig, LeakError, check_no_leak, generator_record, plan_mixes
from components.brats import IngestConfig, IngestError, ingest
from components.export import ExportError, export_mixes
from components.foreign import ingest_synthetic
from data_catalog import MODALITIES, open_dataset
from flows.__main__ import main
from tests import builders as b

GOOD = ("ext-A", "ext-B")


def write_foreign_case(root, cid, seed):
    """A case as another tool might write it: BraTS 2023 names, its own intensities, a brats2023 seg."""
    for k, m in enumerate(MODALITIES):
        b.save(root / cid / f"{cid}-{m}.nii.gz", b.image_array(100 + 10 * seed + k))
    b.save(root / cid / f"{cid}-seg.nii.gz", b.seg_array((1, 2, 3), seed=seed), dtype=np.uint8)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A real dataset (4 train, 2 test cases) and a foreign source: two good cases, one linked to a test
    case, one with a truncated file, one without a seg, one linked to a case the real set lacks, one
    without a link, and a link without a case."""
    base = tmp_path_factory.mktemp("byo")
    ws, src, foreign = base / "ws", base / "real-src", base / "foreign"
    for i in range(6):
        b.write_folder_case(src, "brats2023", i)
    ingest(src, ws, "real", IngestConfig(test_fraction=0.4, workers=1), progress=False)
    real = open_dataset(ws, "real")
    train = sorted(real.ok_cases("train")["case_id"])
    test = sorted(real.ok_cases("test")["case_id"])
    assert len(train) == 4 and len(test) == 2
    for i, cid in enumerate(("ext-A", "ext-B", "ext-T", "ext-X", "ext-S", "ext-U", "ext-N")):
        write_foreign_case(foreign, cid, i)
    b.truncate(foreign / "ext-X" / "ext-X-t2f.nii.gz")
    (foreign / "ext-S" / "ext-S-seg.nii.gz").unlink()
    links = base / "links.csv"
    pd.DataFrame({"case_id": ["ext-A", "ext-B", "ext-T", "ext-X", "ext-S", "ext-U", "ext-gone"],
                  "source_case": [train[0], train[1], test[0], train[2], train[2], "BraTS-GLI-99999-000", train[3]],
                  "quality_score": [0.9, 0.5, 0.1, 0.2, 0.2, 0.3, 0.4]}).to_csv(links, index=False)
    gen = base / "generator_cases.txt"
    gen.write_text("# the real cases the other tool's generator was trained on\ncase_id\n" + "\n".join(train) + "\n")
    return {"ws": ws, "foreign": foreign, "links": links, "gen": gen, "train": train, "test": test, "base": base}


def _ingest(s, name, generator):
    return ingest_synthetic(s["foreign"], s["ws"], name, "real", s["links"], str(generator), progress=False)


# --------------------------------------------------------------------------- ingestion
def test_a_foreign_set_is_validated_linked_and_its_generator_recorded(setup):
    s = setup
    summary = _ingest(s, "ext", s["gen"])
    assert summary.n_ok == 2 and summary.n_quarantined == 6
    q = summary.quarantined
    assert f"real case {s['test'][0]!r}, which is in the 'test' split" in q["ext-T"] and "links.csv" in q["ext-T"]
    assert "ext-X-t2f.nii.gz" in q["ext-X"] and "truncated" in q["ext-X"]
    assert "no seg file" in q["ext-S"] and "found ext-S-t1c.nii.gz" in q["ext-S"]
    assert "'BraTS-GLI-99999-000', which is not a case of real dataset 'real'" in q["ext-U"]
    assert "no row in links file links.csv" in q["ext-N"]
    assert "no case folder ext-gone" in q["ext-gone"]
    for reason in q.values():
        assert reason.startswith("case ext-") and "expected" in reason

    ds = open_dataset(s["ws"], "ext")
    ok = ds.ok_cases().set_index("case_id")
    assert sorted(ok.index) == list(GOOD) and set(ok["split"]) == {"train"}
    assert ok.loc["ext-A", "source_case"] == s["train"][0] and ok.loc["ext-A", "quality_score"] == 0.9
    assert ds.info["kind"] == "synthetic" and ds.info["foreign"] is True
    assert ds.info["generator_dataset"] == "real" and ds.info["generator_train_cases"] == s["train"]
    assert ds.info["parents"][0]["name"] == "real" and ds.info["label_scheme"] == "brats2023"
    # the canonical files are the source's bytes, affines kept
    src = s["foreign"] / "ext-A" / "ext-A-t1c.nii.gz"
    assert ds.path("ext-A", "t1c").read_bytes() == src.read_bytes()
    assert not (ds.root / "cases" / "ext-T").exists() and not (ds.root / "cases" / "ext-X").exists()
    # a re-run reuses the unchanged cases
    assert _ingest(s, "ext", s["gen"]).n_reused == 2


@pytest.mark.parametrize("problem, match", [
    ("no-column", "lacks column\\(s\\) source_case: expected columns case_id,source_case"),
    ("typo-column", "unknown column\\(s\\) sorce"),
    ("repeat", "case 'ext-A' is listed more than once"),
    ("gen-outside", "line 1: case 'not-a-case' is not a case of real dataset 'real'"),
    ("same-name", "is the real dataset itself"),
])
def test_bad_links_or_generator_records_fail_in_one_sentence(setup, tmp_path, problem, match):
    s = setup
    links, gen, name = s["links"], s["gen"], "ext-bad"
    if problem == "no-column":
        links = tmp_path / "l.csv"
        links.write_text("case_id\next-A\n")
    elif problem == "typo-column":
        links = tmp_path / "l.csv"
        links.write_text("case_id,source_case,sorce\next-A,x,y\n")
    elif problem == "repeat":
        links = tmp_path / "l.csv"
        links.write_text(f"case_id,source_case\next-A,{s['train'][0]}\next-A,{s['train'][1]}\n")
    elif problem == "gen-outside":
        gen = tmp_path / "g.txt"
        gen.write_text("not-a-case\n")
    elif problem == "same-name":
        name = "real"
    with pytest.raises(IngestError, match=match):
        ingest_synthetic(s["foreign"], s["ws"], name, "real", links, str(gen), progress=False)


def test_the_command_line_refuses_a_bad_links_file_before_anything_runs(setup, tmp_path, capsys):
    s = setup
    bad = tmp_path / "links.csv"
    bad.write_text("case,source\n")
    rc = main(["ingest-synthetic", str(s["foreign"]), "--workspace", str(s["ws"]), "--name", "ext-cli", "--real",
               "real", "--links", str(bad), "--generator-train-cases", "unknown"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and str(bad) in err[0] and "case_id,source_case" in err[0]


# --------------------------------------------------------------------------- the ablation takes it, with our leak checks
def test_the_ablation_plans_a_foreign_set_and_leak_checks_it_like_ours(setup):
    from flows.ablation import AblationParams, check_ablation

    s = setup
    _ingest(s, "ext", s["gen"])
    real, ext = open_dataset(s["ws"], "real"), open_dataset(s["ws"], "ext")
    cfg = AblationConfig(ratios=(0, 0.5), seeds=(0, 1))
    plans = plan_mixes(real, ext, cfg)
    for p in plans:
        check_no_leak(p, real, ext, generator_record(s["ws"], ext))
        assert set(p.synthetic_ids) == (set(GOOD) if p.ratio else set())
        assert tuple(p.test_ids) == tuple(s["test"])
    _, _, checked = check_ablation(AblationParams(workspace=str(s["ws"]), real="real", synthetic="ext", config=cfg))
    assert [p.train_ids for p in checked] == [p.train_ids for p in plans]
    # high quality takes the better-scored case first
    top = plan_mixes(real, ext, AblationConfig(ratios=(0, 0.25), high_quality=True))[1]
    assert top.synthetic_ids == ("ext-A",)


def test_a_foreign_generator_that_learnt_from_a_test_case_or_does_not_say_is_refused(setup, tmp_path):
    s = setup
    leaky_list = tmp_path / "gen.txt"
    leaky_list.write_text("\n".join([*s["train"], s["test"][1]]) + "\n")
    leaky = _ingest(s, "ext-leaky", leaky_list)
    assert any("test-split" in w for w in leaky.warnings)
    _ingest(s, "ext-unknown", "unknown")
    real = open_dataset(s["ws"], "real")
    cfg = AblationConfig(ratios=(0, 0.5))
    for name, match in (("ext-leaky", f"learnt from test-split cases \\['{s['test'][1]}'\\]"),
                        ("ext-unknown", "does not say which real cases its generator learnt from")):
        ds = open_dataset(s["ws"], name)
        plan = plan_mixes(real, ds, cfg)[1]
        with pytest.raises(LeakError, match=match):
            check_no_leak(plan, real, ds, generator_record(s["ws"], ds))
        with pytest.raises(LeakError, match=match):  # and the export of its mixes too
            export_mixes(s["ws"], real, ds, cfg, tmp_path / f"mix-{name}")
    assert not list(tmp_path.glob("mix-*"))


# --------------------------------------------------------------------------- export --mix, then score your own predictions
def test_export_mix_writes_the_ablations_exact_cases_and_predictions_score_with_evaluate_segmentation(
        setup, tmp_path, prefect_harness, capsys):
    s = setup
    ws = str(s["ws"])
    rc = main(["ingest-synthetic", str(s["foreign"]), "--workspace", ws, "--name", "ext-cli", "--real", "real",
               "--links", str(s["links"]), "--generator-train-cases", str(s["gen"])])
    printed = capsys.readouterr().out
    assert rc == 0 and "ext-cli: 2 ok, 6 quarantined" in printed and "quarantined ext-T:" in printed

    out = tmp_path / "mixes"
    args = ["export", "--workspace", ws, "--dataset", "real", "--synthetic", "ext-cli", "--mix", "--ratios", "0",
            "0.5", "--seeds", "0", "1", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "exported 4 ablation mixes" in printed and "evaluate-segmentation --gt" in printed

    real, ext = open_dataset(ws, "real"), open_dataset(ws, "ext-cli")
    plans = plan_mixes(real, ext, AblationConfig(ratios=(0, 0.5), seeds=(0, 1)))
    info = json.loads((out / "mixes.json").read_text())
    mixes = pd.read_csv(out / "mixes.csv")
    assert info["config"]["seeds"] == [0, 1] and [p["name"] for p in info["plans"]] == [p.name for p in plans]
    for p in plans:
        folder = out / info["datasets"][p.name]
        tr = sorted(f.name[: -len("_0000.nii.gz")] for f in (folder / "imagesTr").glob("*_0000.nii.gz"))
        labels = sorted(f.name[: -len(".nii.gz")] for f in (folder / "labelsTr").glob("*.nii.gz"))
        assert tr == labels == list(p.train_ids)
        assert sorted(f.name[: -len(".nii.gz")] for f in (folder / "labelsTs").glob("*.nii.gz")) == list(p.test_ids)
        assert len(list((folder / "imagesTr").glob("*.nii.gz"))) == 4 * len(p.train_ids)
        dj = json.loads((folder / "dataset.json").read_text())
        assert dj["numTraining"] == len(p.train_ids) and dj["gliosynth_mix"] == p.name
        rows = mixes[mixes["config"] == p.name]
        assert sorted(rows.loc[rows["part"] == "train", "case_id"]) == list(p.train_ids)
        assert set(rows.loc[rows["kind"] == "synthetic", "case_id"]) == set(p.synthetic_ids)
    # a real file, linked byte for byte
    first = out / info["datasets"]["r0p5-s0"]
    assert (first / "imagesTr" / "ext-A_0001.nii.gz").read_bytes() == ext.path("ext-A", "t1c").read_bytes()
    # exporting again replaces the folder; a folder that is not a mix export is never replaced
    assert main(args) == 0
    other = tmp_path / "nnUNet_raw"
    (other / "Dataset001_mine").mkdir(parents=True)
    assert main([*args[:-1], str(other)]) == 2
    assert "is not an earlier `export --mix` output" in capsys.readouterr().err
    assert (other / "Dataset001_mine").is_dir()

    # "predictions" that are the ground truth score Dice 1 on every test case and region
    preds = tmp_path / "preds"
    shutil.copytree(first / "labelsTs", preds)
    scores = tmp_path / "scores.csv"
    assert main(["evaluate-segmentation", "--workspace", ws, "--gt", str(first / "labelsTs"), "--pred", str(preds),
                 "--label-scheme", "brats2023", "--out", str(scores)]) == 0
    table = pd.read_csv(scores)
    assert sorted(table["case_id"].unique()) == s["test"] and set(table["region"]) == {"WT", "TC", "ET"}
    assert (table["dice"] == 1.0).all() and (table["hd95"] == 0.0).all()


def test_export_mix_needs_mix_for_its_options(setup, capsys):
    rc = main(["export", "--workspace", str(setup["ws"]), "--dataset", "real", "--format", "nnunet", "--ratios", "0",
               "--out", str(setup["base"] / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--ratios: expected --mix" in err[0]
    with pytest.raises(ExportError, match="expected --format nnunet"):
        from flows.ablation import ExportParams, check_export

        check_export(ExportParams(workspace=str(setup["ws"]), dataset="real", format="brats", out="x",
                                  mix=AblationConfig(ratios=(0,))))
