"""The embedded phantom: deterministic, BraTS-like, under the dataset contract."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from components.phantom import PhantomConfig, make_phantom
from data_catalog import MODALITIES, load_label_scheme, open_dataset


@pytest.fixture(scope="module")
def phantom_ws(tmp_path_factory):
    ws = tmp_path_factory.mktemp("ph")
    cfg = PhantomConfig(cases=2, spacing=6.0, seed=3)
    make_phantom(ws, "a", cfg, progress=False)
    make_phantom(ws, "b", cfg, progress=False)
    make_phantom(ws, "c", cfg.model_copy(update={"seed": 4}), progress=False)
    return ws


def _digests(ds):
    return ds.manifest[[f"sha256_{k}" for k in (*MODALITIES, "seg")]].to_numpy().tolist()


def test_same_seed_same_bytes_other_seed_differs(phantom_ws):
    a, b, c = (open_dataset(phantom_ws, n) for n in "abc")
    assert _digests(a) == _digests(b)
    assert _digests(a) != _digests(c)
    assert a.manifest["seed"].tolist() == b.manifest["seed"].tolist() != c.manifest["seed"].tolist()


def test_cases_are_brats_like(phantom_ws):
    ds = open_dataset(phantom_ws, "a")
    assert ds.info["kind"] == "phantom" and "never claims about BraTS" in ds.info["note"]
    scheme = load_label_scheme("brats2023")
    for _, row in ds.manifest.iterrows():
        seg_img = nib.load(str(ds.root / row["seg"]))
        seg = np.asarray(seg_img.dataobj)
        assert set(np.unique(seg)) <= set(scheme.values)
        assert (seg == scheme.label("ED")).any() and (seg == scheme.label("ET")).any()
        np.testing.assert_allclose(seg_img.header.get_zooms()[:3], (6.0, 6.0, 6.0))
        t1c = np.asarray(nib.load(str(ds.root / row["t1c"])).dataobj).astype(float)
        t1n = np.asarray(nib.load(str(ds.root / row["t1n"])).dataobj).astype(float)
        brain = t1n > 0
        assert 0.05 < brain.mean() < 0.6  # skull-stripped brain inside a larger grid
        assert (seg[~brain] == 0).all()
        et = seg == scheme.label("ET")
        wm_like = brain & (seg == 0)
        # Enhancing tumour is brighter on T1c than on T1n, relative to normal tissue.
        assert t1c[et].mean() / t1c[wm_like].mean() > t1n[et].mean() / t1n[wm_like].mean()


def test_post_treatment_scheme_has_cavity(tmp_path):
    make_phantom(tmp_path, "p", PhantomConfig(cases=1, spacing=6.0, label_scheme="brats2024_post", p_cavity=1.0),
                 progress=False)
    ds = open_dataset(tmp_path, "p")
    assert ds.info["label_scheme"] == "brats2024_post"
    assert 4 in list(ds.manifest.loc[0, "labels"])


def test_rejects_a_source_scheme(tmp_path):
    with pytest.raises(ValueError, match="unknown label scheme 'brats2021'"):
        make_phantom(tmp_path, "x", PhantomConfig(cases=1, spacing=6.0, label_scheme="brats2021"), progress=False)
