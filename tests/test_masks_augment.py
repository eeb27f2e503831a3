"""sample_mask_params / apply_mask_params: seeded, replayable, labels resampled nearest-neighbour only."""

from __future__ import annotations

import json

import numpy as np
import pytest

from components.masks import MaskAugmentConfig, MaskCase, apply_mask_params, derive_head_mask, sample_mask_params
from components.masks.params import MaskParams
from tests import builders as b

ALL_ON = MaskAugmentConfig(flip={"p": 1.0}, affine={"p": 1.0}, elastic={"p": 1.0}, tumour_scale={"p": 1.0},
                           relocate={"p": 1.0, "p_other_case": 0.5})
ALL_OFF = MaskAugmentConfig(flip={"p": 0.0}, affine={"p": 0.0}, elastic={"p": 0.0}, tumour_scale={"p": 0.0},
                            relocate={"p": 0.0})


@pytest.fixture(scope="module")
def cases():
    out = {}
    for i in range(2):
        images, seg, _ = b.mask_case(10 + i)
        out[f"c{i}"] = MaskCase(f"c{i}", "train", seg, derive_head_mask(images, seg, spacing=b.MASK_SPACING),
                                b.MASK_SPACING, 0)
    return out


def _draw(cases, seed, cfg=ALL_ON, cid="c0"):
    case = cases[cid]
    rng = np.random.default_rng(seed)
    hosts = [h for h in cases if h != cid]
    p = sample_mask_params(rng, case, cfg, hosts, cases.__getitem__)
    seg, head = apply_mask_params(case.seg, case.head, p, cases[p.host_case].head)
    return p, seg, head


def test_same_seed_gives_byte_identical_masks(cases):
    for seed in range(4):
        p1, s1, h1 = _draw(cases, seed)
        p2, s2, h2 = _draw(cases, seed)
        assert p1 == p2
        assert s1.tobytes() == s2.tobytes() and h1.tobytes() == h2.tobytes()


def test_different_seeds_give_different_masks(cases):
    masks = {_draw(cases, seed)[1].tobytes() for seed in range(6)}
    assert len(masks) == 6


def test_params_replay_exactly_from_json(cases):
    for seed in range(4):
        p, seg, head = _draw(cases, seed)
        q = json.loads(p.to_json())  # as the manifest holds them
        host = cases[q["host_case"]].head if q["host_case"] != "c0" else None
        seg2, head2 = apply_mask_params(cases["c0"].seg, cases["c0"].head, q, host)
        assert seg2.tobytes() == seg.tobytes() and head2.tobytes() == head.tobytes()


def test_every_transform_is_drawn_and_recorded(cases):
    p, _, _ = _draw(cases, 0)
    assert p.flip.axis == 0
    assert set(p.affine.model_dump()) == {"centre_vox", "rotation_deg", "scale", "translation_mm"}
    assert p.tumour.elastic.seed >= 0 and len(p.tumour.scale) == 3
    assert p.tumour.centre_dst_vox != p.tumour.centre_src_vox
    hosts = {_draw(cases, s)[0].host_case for s in range(8)}
    assert hosts == {"c0", "c1"}  # relocations into its own head and into the other case's


def test_labels_are_resampled_nearest_neighbour_only(cases):
    src_values = set(np.unique(cases["c0"].seg))
    for seed in range(6):
        _, seg, head = _draw(cases, seed)
        assert set(np.unique(seg)) <= src_values
        assert seg.dtype == np.uint8 and head.dtype == bool


def test_all_probabilities_zero_is_the_identity(cases):
    p, seg, head = _draw(cases, 3, ALL_OFF)
    assert p.tumour is None and p.flip is None and p.affine is None
    assert np.array_equal(seg, cases["c0"].seg) and np.array_equal(head, cases["c0"].head)


def test_flip_is_an_exact_mirror(cases):
    cfg = ALL_OFF.model_copy(update={"flip": ALL_ON.flip})
    _, seg, head = _draw(cases, 0, cfg)
    assert np.array_equal(seg, cases["c0"].seg[::-1]) and np.array_equal(head, cases["c0"].head[::-1])


def test_tumour_scaling_changes_volume_as_drawn(cases):
    cfg = ALL_OFF.model_copy(update={"tumour_scale": ALL_ON.tumour_scale})
    p, seg, _ = _draw(cases, 1, cfg)
    expected = (cases["c0"].seg > 0).sum() * np.prod(p.tumour.scale)
    assert abs((seg > 0).sum() / expected - 1.0) < 0.15


def test_relocation_into_another_head_needs_that_head(cases):
    for seed in range(20):
        p, _, _ = _draw(cases, seed)
        if p.host_case == "c1":
            break
    with pytest.raises(ValueError, match="host_head"):
        apply_mask_params(cases["c0"].seg, cases["c0"].head, p)


def test_a_range_with_low_above_high_is_refused():
    with pytest.raises(ValueError, match=r"low <= high"):
        MaskAugmentConfig(tumour_scale={"scale": (1.5, 0.5)})


# Params of an augmented mask as a masks manifest written before they were typed holds them.
STORED = ('{"affine":{"centre_vox":[19.5,19.5,15.5],"rotation_deg":[-9.328288493890714,4.59310892859888,'
          '-6.48688758794882],"scale":1.058108627575982,"translation_mm":[0.4975346429891001,-2.4034573135513826,'
          '-0.9277533456280986]},"draw":2,"flip":{"axis":0},"host_case":"c1","shape":[40,40,32],"source_case":"c0",'
          '"spacing":[2.0,2.0,2.0],"tumour":{"centre_dst_vox":[18.5,18.5,20.5],"centre_src_vox":[21.5,22.5,13.5],'
          '"elastic":{"control_mm":18.574042765875696,"magnitude_mm":1.0082155005104443,"seed":595598245},'
          '"scale":[1.2020756939484352,1.139363832158262,1.271435656469531]},"version":1}')


def test_stored_params_parse_and_serialise_to_the_same_json(cases):
    p = MaskParams.parse(STORED)
    assert p.to_json() == STORED and p.draw == 2 and p.tumour.elastic.seed == 595598245
    assert MaskParams.parse(json.loads(STORED)) == p
    drawn, _, _ = _draw(cases, 0)
    assert drawn.draw is None and '"draw"' not in drawn.to_json()  # the masks dataset sets it
    assert MaskParams.parse(drawn.to_json()) == drawn
    assert MaskParams.coerce("") is None and MaskParams.coerce({}) is None


def test_params_with_an_unknown_key_or_a_bad_value_are_refused():
    with pytest.raises(ValueError, match="extra"):
        MaskParams.parse({**json.loads(STORED), "colour": "red"})
    with pytest.raises(ValueError, match="axis"):
        MaskParams.parse({**json.loads(STORED), "flip": {"axis": 3}})
