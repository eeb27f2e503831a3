"""Backends by name: synthesizers, segmenters and mask sources (interfaces in ``registry``).

The flows and tasks never name an implementation: they ask these registries for the one the
config names (``synthesizer.backend``, ``ablation.segmenters``, ``masks.source``). Adding a
backend is one module in this folder and one registry line below; a test can register one at run
time with ``register_synthesizer(name, factory)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Annotated

from pydantic import AfterValidator

from components.backends.registry import (
    MASK_SOURCES,
    SEGMENTERS,
    SYNTHESIZERS,
    DatasetSummary,
    FittedSegmenter,
    MaskSource,
    MasksSummary,
    ModelSummary,
    Registry,
    Segmenter,
    Summary,
    Synthesizer,
    TrainSummary,
    lazy,
    summary_dict,
)

DEFAULT_SYNTHESIZER = "ddpm"
DEFAULT_SEGMENTER = "nnunet"
DEFAULT_MASK_SOURCE = "augment"

# ----- the registry lines: one per built-in backend
SYNTHESIZERS.register("ddpm", lazy("components.backends.ddpm", "DdpmSynthesizer"))
SYNTHESIZERS.register("ldm", lazy("components.backends.ldm", "LdmSynthesizer"))
SYNTHESIZERS.register("sbldm", lazy("components.backends.sbldm", "SbldmSynthesizer"))
SEGMENTERS.register("nnunet", lazy("components.backends.nnunet", "NnunetSegmenter"))
SEGMENTERS.register("segresnet", lazy("components.backends.segresnet", "SegresnetSegmenter"))
SEGMENTERS.register("ldmseg", lazy("components.backends.ldmseg", "LdmsegSegmenter"))
MASK_SOURCES.register("augment", lazy("components.backends.augment", "AugmentMasks"))
MASK_SOURCES.register("ldm", lazy("components.backends.ldm_masks", "LdmMasks"))


def register_synthesizer(name: str, factory: Callable[[], Synthesizer], *, replace: bool = False) -> None:
    SYNTHESIZERS.register(name, factory, replace=replace)


def register_segmenter(name: str, factory: Callable[[], Segmenter], *, replace: bool = False) -> None:
    SEGMENTERS.register(name, factory, replace=replace)


def register_mask_source(name: str, factory: Callable[[], MaskSource], *, replace: bool = False) -> None:
    MASK_SOURCES.register(name, factory, replace=replace)


def get_synthesizer(name: str) -> Synthesizer:
    """The synthesizer registered as ``name`` (InputError naming the known ones otherwise)."""
    return SYNTHESIZERS.get(name)


def get_segmenter(name: str) -> Segmenter:
    """The segmenter registered as ``name`` (InputError naming the known ones otherwise)."""
    return SEGMENTERS.get(name)


def get_mask_source(name: str) -> MaskSource:
    """The mask source registered as ``name`` (InputError naming the known ones otherwise)."""
    return MASK_SOURCES.get(name)


def check_synthesizer(name: str) -> str:
    return SYNTHESIZERS.check(name)


def check_segmenters(names: Iterable[str]) -> tuple[str, ...]:
    return SEGMENTERS.check_all(names)


def check_mask_source(name: str) -> str:
    return MASK_SOURCES.check(name)


# Field types of the params models and the pipeline config: a registered name, checked on validation.
SynthesizerName = Annotated[str, AfterValidator(check_synthesizer)]
SegmenterNames = Annotated[tuple[str, ...], AfterValidator(check_segmenters)]
MaskSourceName = Annotated[str, AfterValidator(check_mask_source)]


__all__ = [
    "DEFAULT_MASK_SOURCE", "DEFAULT_SEGMENTER", "DEFAULT_SYNTHESIZER", "MASK_SOURCES", "SEGMENTERS", "SYNTHESIZERS",
    "DatasetSummary", "FittedSegmenter", "MaskSource", "MaskSourceName", "MasksSummary", "ModelSummary", "Registry",
    "Segmenter", "SegmenterNames", "Summary", "SynthesizerName", "Synthesizer", "TrainSummary", "check_mask_source",
    "check_segmenters", "check_synthesizer",
    "get_mask_source", "get_segmenter", "get_synthesizer", "lazy", "register_mask_source", "register_segmenter",
    "register_synthesizer", "summary_dict",
]
