"""The anatomical prior follows an augmented mask's recorded whole-head transform (flip, affine).

The prior is built from the phantom heads of ``builders.mask_case`` (a sphere at the centre of a
cubic grid with a ventricle-like blob 7 voxels to the left, bright only in t2w), so a flip or a
rotation moves the blob to a known place: where ``apply_mask_params`` moves a label of it.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from components.masks import MaskAugmentConfig, MaskCase, apply_mask_params, augment_masks, sample_mask_params
from components.synthesis import writer
from components.synthesis.config import DataConfig, SynthesizeConfig
from components.synthesis.data import fit_case, intensity_window, normalise
from components.synthesis.prior import prior_transform_kind, transform_prior
from components.synthesis.store import load_trained_model
from components.synthesis.training import train_synthesizer
from data_catalog import open_dataset
from tests import builders as b

SHAPE = (32, 32, 32)
SPACING = (2.0, 2.0, 2.0)
AFFINE = np.diag([*SPACING, 1.0])
GRID = DataConfig(shape=SHAPE)
OFF = {"flip": {"p": 0.0}, "affine": {"p": 0.0}, "elastic": {"p": 0.0}, "tumour_scale": {"p": 0.0}, "relocate": {"p": 0.0}}
FLIP = MaskAugmentConfig(**{**OFF, "flip": {"p": 1.0}})
TURN = MaskAugmentConfig(**{**OFF, "flip": {"p": 1.0}, "affine": {"p": 1.0, "rotation_deg": 30.0, "scale": (0.95, 1.05),
                                                                 "translation_mm": 2.0}})
IDENTITY = MaskAugmentConfig(**OFF)


def _ventricle(shape=SHAPE) -> np.ndarray:
    """The blob of ``builders.mask_case`` as a label (without the tumour that may cover part of it)."""
    c = np.array(shape) / 2.0 - 0.5
    x, y, z = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (((x - c[0] + 7) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) <= 9).astype(np.uint8)


def _com(m: np.ndarray) -> np.ndarray:
    return np.argwhere(m).mean(0)


@pytest.fixture(scope="module")
def host():
    """One phantom case: its seg/head on the native grid, its fit and its images as the prior."""
    images, seg, head = b.mask_case(0, SHAPE)
    fit = fit_case(images, seg, head, AFFINE, GRID)
    lo, hi = intensity_window(fit.images, fit.head, (0.5, 99.5))
    return {"seg": seg, "head": head, "fit": fit, "prior": normalise(fit.images, fit.head, lo, hi)}


def _moved(host, params):
    """(prior for the mask ``params`` make, the blob's place on that mask's model grid)."""
    vent, head = apply_mask_params(_ventricle(), host["head"], params)
    fit = fit_case(None, vent, head, AFFINE, GRID)  # the mask as synthesize fits it
    moved = transform_prior(host["prior"], params, fit.affine, AFFINE, host["fit"].affine, AFFINE)
    return moved, fit.seg > 0


def _params(host, cfg: MaskAugmentConfig, seed: int = 1) -> dict:
    case = MaskCase("c0", "train", host["seg"], host["head"], SPACING, 0)
    return json.loads(sample_mask_params(np.random.default_rng(seed), case, cfg).to_json())  # as the manifest holds them


def test_a_flipped_mask_gets_the_flipped_prior(host):
    params = _params(host, FLIP)
    assert params["flip"] == {"axis": 0} and params["affine"] is None and prior_transform_kind(params) == "flip"
    moved, vent = _moved(host, params)
    prior = host["prior"]
    # the head is symmetric and the flip is exact: the prior mirrored left-right, voxel for voxel
    np.testing.assert_allclose(moved, np.flip(prior, axis=1), atol=1e-5)
    assert np.linalg.norm(_com(moved[2] > 0.5) - _com(vent)) < 0.5
    assert np.linalg.norm(_com(prior[2] > 0.5) - _com(vent)) > 10  # the untransformed blob is on the other side


def test_a_rotated_mask_gets_the_rotated_prior(host):
    centre = MaskCase("c0", "train", host["seg"], host["head"], SPACING, 0).head_centre
    params = {**_params(host, IDENTITY), "affine": {"centre_vox": centre.tolist(), "rotation_deg": [0.0, 0.0, 30.0],
                                                    "scale": 1.05, "translation_mm": [2.0, -2.0, 0.0]}}
    assert prior_transform_kind(params) == "affine"
    moved, vent = _moved(host, params)
    prior = host["prior"]
    assert np.linalg.norm(_com(moved[2] > 0.5) - _com(vent)) < 0.5
    assert np.linalg.norm(_com(prior[2] > 0.5) - _com(vent)) > 3
    corr = [float(np.corrcoef(p[2].ravel(), vent.ravel())[0, 1]) for p in (moved, prior)]
    assert corr[0] > 0.7 and corr[0] > corr[1] + 0.4


def test_a_mask_without_a_head_transform_keeps_the_prior(host):
    for params in ({}, _params(host, IDENTITY),
                   _params(host, MaskAugmentConfig(**{**OFF, "elastic": {"p": 1.0}, "tumour_scale": {"p": 1.0},
                                                      "relocate": {"p": 1.0}}))):
        assert prior_transform_kind(params) == "none"
        assert transform_prior(host["prior"], params, host["fit"].affine, AFFINE, np.eye(4), np.eye(4)) is host["prior"]
    assert prior_transform_kind(_params(host, TURN)) == "affine+flip"


def test_the_sampler_takes_one_prior_per_volume():
    from components.synthesis.network import build_network
    from components.synthesis.sampling import make_generator, sample_images

    cfg = b.tiny_synth_config()
    net = build_network(cfg.network, 5, seed=0, diffusion=cfg.diffusion).eval()
    labels = torch.ones((2, 16, 16, 16), dtype=torch.long)
    shared = torch.full((4, 16, 16, 16), 0.5)
    each = torch.stack([shared, torch.full((4, 16, 16, 16), -0.5)])

    def run(prior):
        with b.torch_threads(1):
            return sample_images(net, labels, 5, cfg.diffusion, [make_generator(0), make_generator(1)], steps=1,
                                 progress=False, prior=prior)

    # one DDIM step of the untrained network centred on the prior gives the prior (see test_synthesis_sampling)
    torch.testing.assert_close(run(each), each, atol=1e-2, rtol=0)
    assert torch.equal(run(shared), run(torch.stack([shared, shared])))  # the same values as the shared prior


# --------------------------------------------------------------------------- through synthesize_dataset
@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    ws = tmp_path_factory.mktemp("synth-prior")
    b.write_mask_source(ws, "src", splits=("train", "train", "train", "test"), shape=SHAPE, spacing=SPACING)
    cfg = b.tiny_synth_config(steps=1, grad_accum=1, montage_cases=0)  # the network is never sampled here
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"shape": SHAPE, "train_crop": (16, 16, 16)})})
    with b.torch_threads(1):
        train_synthesizer(ws, "src", "m", cfg, track=False, progress=False)
    for name, mcfg in (("mturn", TURN), ("mid", IDENTITY)):
        augment_masks(ws, "src", name, mcfg.model_copy(update={"per_case": 1, "workers": 1}), progress=False)
    return ws


@pytest.fixture
def prior_sampler(monkeypatch):
    """Replace the network by the prior it is given: each sample is its volume's prior."""
    seen = []

    def fake(network, labels, n_condition, diffusion, generators, prior=None, **kw):
        seen.append(prior.clone())
        return (prior if prior.dim() == 5 else prior[None].expand(labels.shape[0], -1, -1, -1, -1)).clone()

    monkeypatch.setattr(writer, "sample_images", fake)
    return seen


def test_synthesize_moves_the_prior_with_each_mask(ws, prior_sampler):
    writer.synthesize_dataset(ws, "m", "mturn", "syn-turn", SynthesizeConfig(montage_cases=0, batch=2), progress=False)
    ds, masks = open_dataset(ws, "syn-turn"), open_dataset(ws, "mturn")
    mrows = masks.manifest.set_index("case_id")
    assert (ds.manifest["status"] == "ok").all() and len(ds.manifest) >= 3
    for _, r in ds.manifest.iterrows():
        assert json.loads(r["params"])["prior_transform"] == "affine+flip"
        params = json.loads(mrows.loc[r["mask_case"], "params"])
        head = np.asarray(nib.load(str(masks.path(r["mask_case"], "head"))).dataobj) > 0
        vent, _ = apply_mask_params(_ventricle(), np.ones(SHAPE, bool), params)  # where the mask moved the blob
        t2w = np.asarray(nib.load(str(ds.path(r["case_id"], "t2w"))).dataobj).astype(float)
        bright = t2w > 0.5 * (np.median(t2w[head]) + t2w.max())
        assert np.linalg.norm(_com(bright) - _com(vent)) < 1.0, r["case_id"]


def test_synthesize_gives_an_untransformed_mask_the_model_prior_unchanged(ws, prior_sampler):
    writer.synthesize_dataset(ws, "m", "mid", "syn-id", SynthesizeConfig(montage_cases=0, batch=2), progress=False)
    ds = open_dataset(ws, "syn-id")
    assert (ds.manifest["status"] == "ok").all()
    assert all(json.loads(p)["prior_transform"] == "none" for p in ds.manifest["params"])
    prior = load_trained_model(ws, "m").prior
    assert prior_sampler and all(p.dim() == 4 and torch.equal(p, prior) for p in prior_sampler)
