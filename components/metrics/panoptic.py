"""The ``brats2025`` scoring preset: the BraTS 2025 glioma scorer, computed with ``panoptica``.

Follows ``brats-evaluation`` 0.0.10, configuration ``config_gli.yaml`` (panoptica 2.1.7): semantic input,
instances by plain connected components, one-to-one matching that maximises Dice (pairs need Dice > 1e-6),
instance and global metrics DSC, NSD (panoptica's default tolerance) and HD95, and its zero-TP edge cases
(DSC/NSD 0 and HD95 inf when either side is empty, NaN when both are). ``brats-evaluation`` itself
(AGPL-3.0) is not a dependency: the same configuration is built here with panoptica's API (Apache-2.0).

Per case and region: ``dice``, ``hd95``, ``nsd`` (global, whole-region), ``pq``, ``sq``, ``rq`` (panoptic
quality = segmentation quality x recognition quality, SQ and PQ on Dice) and ``tp``, ``fp``, ``fn`` (lesion
counts). As in the official scorer the global Dice/NSD/HD95 are computed without the voxel spacing (voxel
units); the spacing reaches panoptica's per-lesion metrics only.
"""

from __future__ import annotations

import contextlib
import io
import threading
import warnings
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Literal

import numpy as np
from pydantic import Field

from components.config_base import FrozenModel
from data_catalog import LabelScheme

PANOPTIC_COLUMNS = ["dice", "hd95", "nsd", "pq", "sq", "rq", "tp", "fp", "fn"]
OFFICIAL = "brats-evaluation 0.0.10 config_gli.yaml (panoptica 2.1.7)"

_build_lock = threading.Lock()


class PanopticConfig(FrozenModel):
    """Settings of the panoptica scorer; the defaults are the official BraTS 2025 glioma configuration."""

    preset: Literal["brats2025"] = Field("brats2025", description="name recorded with the scores")
    follows: str = Field(OFFICIAL, description="official configuration reproduced")
    matching_threshold: float = Field(1e-6, ge=0.0, description="minimum Dice of a matched lesion pair")


def panoptic_preset(name: str) -> PanopticConfig:
    """``brats2025``: the BraTS 2025 glioma configuration of brats-evaluation 0.0.10 (``config_gli.yaml``)."""
    if name == "brats2025":
        return PanopticConfig()
    raise ValueError(f"unknown panoptica preset {name!r}: expected 'brats2025'")


@lru_cache(maxsize=8)
def _evaluator(regions: tuple[tuple[str, tuple[int, ...]], ...], matching_threshold: float) -> Any:
    # panoptica pulls in plotly/pandas/rich at import (~3 s): imported here, on first use only.
    from panoptica import (
        ConnectedComponentsInstanceApproximator,
        InputType,
        MaxBipartiteMatching,
        Metric,
        Panoptica_Evaluator,
        disable_citation_reminder,
    )
    from panoptica.utils import EdgeCaseHandler, EdgeCaseResult, LabelGroup, LabelMergeGroup, SegmentationClassGroups
    from panoptica.utils.edge_case_handling import MetricZeroTPEdgeCaseHandling

    disable_citation_reminder()

    def zero_tp(value: EdgeCaseResult) -> MetricZeroTPEdgeCaseHandling:
        return MetricZeroTPEdgeCaseHandling(empty_prediction_result=value, empty_reference_result=value,
                                            no_instances_result=EdgeCaseResult.NAN, normal=value)

    groups = {name.lower(): (LabelGroup(list(labels)) if len(labels) == 1 else LabelMergeGroup(list(labels)))
              for name, labels in regions}
    # panoptica prints a notice when regions share labels (WT and TC do, as in the official config).
    with contextlib.redirect_stdout(io.StringIO()):
        class_groups = SegmentationClassGroups(groups)
    return Panoptica_Evaluator(
        expected_input=InputType.SEMANTIC,
        instance_approximator=ConnectedComponentsInstanceApproximator(),
        instance_matcher=MaxBipartiteMatching(matching_metric=Metric.DSC, matching_threshold=matching_threshold),
        edge_case_handler=EdgeCaseHandler(
            listmetric_zeroTP_handling={Metric.DSC: zero_tp(EdgeCaseResult.ZERO),
                                        Metric.NSD: zero_tp(EdgeCaseResult.ZERO),
                                        Metric.HD95: zero_tp(EdgeCaseResult.INF)},
            empty_list_std=EdgeCaseResult.NAN,
        ),
        segmentation_class_groups=class_groups,
        instance_metrics=[Metric.DSC, Metric.NSD, Metric.HD95],
        global_metrics=[Metric.DSC, Metric.NSD, Metric.HD95],
        log_times=False,
        save_group_times=False,
    )


def panoptic_scores(
    pred_seg: np.ndarray, gt_seg: np.ndarray, spacing: Sequence[float], scheme: LabelScheme,
    cfg: PanopticConfig | None = None,
) -> dict[str, dict[str, float]]:
    """Region -> {dice, hd95, nsd, pq, sq, rq, tp, fp, fn} for every region of ``scheme``.

    pred_seg, gt_seg: (X, Y, Z) integer label maps of ``scheme`` on one grid; spacing in mm per axis.
    """
    cfg = cfg or PanopticConfig()
    regions = tuple((name, tuple(int(v) for v in labels)) for name, labels in scheme.regions.items())
    with _build_lock:
        evaluator = _evaluator(regions, cfg.matching_threshold)
        # The official configuration keeps panoptica's default NSD tolerance on purpose; it warns about it each case.
        warnings.filterwarnings("ignore", message="The threshold is set to 0.5", category=UserWarning)
    # panoptica refuses labels outside every group; such labels belong to no region, so they score as background.
    covered = sorted({v for _, labels in regions for v in labels})
    pred = np.where(np.isin(pred_seg, covered), pred_seg, 0).astype(np.int32)
    gt = np.where(np.isin(gt_seg, covered), gt_seg, 0).astype(np.int32)
    results = evaluator.evaluate(pred, gt, voxelspacing=tuple(float(s) for s in spacing), verbose=False)
    out: dict[str, dict[str, float]] = {}
    for name, _ in regions:
        r = results[name.lower()]
        out[name] = {
            "dice": float(r.global_bin_dsc), "hd95": float(r.global_bin_hd95), "nsd": float(r.global_bin_nsd),
            "pq": float(r.pq_dsc), "sq": float(r.sq_dsc), "rq": float(r.rq),
            "tp": int(r.tp), "fp": int(r.fp), "fn": int(r.fn),
        }
    return out
