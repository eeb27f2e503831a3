"""The pipeline's config: one YAML file, every stage typed and checked before anything runs.

Kept apart from the flow (no Prefect, no torch at import), so the command line validates a config
and answers in a second or two.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from components.ablation import AblationConfig
from components.backends import (
    DEFAULT_MASK_SOURCE,
    DEFAULT_SEGMENTER,
    DEFAULT_SYNTHESIZER,
    MaskSourceName,
    SegmenterNames,
    SynthesizerName,
    get_mask_source,
    get_synthesizer,
)
from components.brats import IngestConfig
from components.errors import InputError
from components.masks import MaskAugmentConfig
from components.metrics.synthesis import SynthesisEvalConfig
from components.phantom import PhantomConfig
from components.synthesis.config import SynthesizeConfig
from data_catalog import Dataset
from flows.runners import RunnerConfig


class DataStage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = "phantom"
    phantom: PhantomConfig | None = None
    source: str | None = Field(None, description="a BraTS/MSD release folder to ingest (instead of the phantom)")
    ingest: IngestConfig = IngestConfig()

    @model_validator(mode="after")
    def _one_source(self) -> DataStage:
        if (self.phantom is None) == (self.source is None):
            raise ValueError("data: give exactly one of `phantom` (embedded default) or `source` (a release folder)")
        if self.source is not None and not Path(self.source).is_dir():
            raise ValueError(f"data.source {self.source!r} is not a folder: expected a BraTS or MSD release folder")
        return self


class ExtraMaskSource(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    source: MaskSourceName = Field(description="mask source backend (components.backends), e.g. ldm")
    config: dict[str, Any] = Field(default_factory=dict, description="that source's own settings (ldm: profile, "
                                   "per_case, seed, ...), checked by the backend when the config is read")

    @model_validator(mode="after")
    def _backend_config(self) -> ExtraMaskSource:
        resolve = getattr(get_mask_source(self.source), "resolve_config", None)
        if resolve is not None:
            resolve(self.config)  # refuses bad settings now, in one sentence, before anything runs
        return self


class MasksStage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = "masks"
    source: MaskSourceName = Field(DEFAULT_MASK_SOURCE, description="mask source backend (components.backends)")
    config: MaskAugmentConfig = MaskAugmentConfig(splits=("train",))
    also: tuple[ExtraMaskSource, ...] = Field(
        (), description="more mask sources whose masks join this stage's (e.g. ldm beside augment): each writes "
        "<name>-<source>, and <name> holds all their masks (components.masks.combine) for every synthesizer")

    @model_validator(mode="after")
    def _distinct_sources(self) -> MasksStage:
        names = [self.source, *(e.source for e in self.also)]
        if len(set(names)) != len(names):
            raise ValueError(f"masks: each mask source once (source and also), got {names}")
        return self

    @property
    def sources(self) -> list[tuple[str, Any]]:
        """(backend, config) of every mask source, the primary first."""
        return [(self.source, self.config), *((e.source, e.config) for e in self.also)]


class SynthesizerStage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = "synthesizer"
    backend: SynthesizerName = Field(DEFAULT_SYNTHESIZER, description="synthesizer backend (components.backends)")
    profile: str = Field("cpu-demo", validate_default=True, description="a profile of the backend (ddpm: "
                         "configs/synthesizer/<name>.yaml) or a YAML file path")
    steps: int | None = Field(None, ge=1)
    label: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$", description="how tables and MLflow name "
                              "this synthesizer when several are crossed (default: its backend)")

    @property
    def arm(self) -> str:
        return self.label or self.backend

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, v: str, info: ValidationInfo) -> str:
        if "backend" in info.data:  # an unknown backend is reported on its own key
            get_synthesizer(info.data["backend"]).check_profile(v)
        return v


class SynthesisStage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = "synthetic"
    config: SynthesizeConfig = SynthesizeConfig()


class EvaluationStage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    config: SynthesisEvalConfig = SynthesisEvalConfig()


class AblationStage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = "ablation"
    config: AblationConfig = AblationConfig()
    segmenters: SegmenterNames = Field(
        (DEFAULT_SEGMENTER,), min_length=1, description="segmenter backends (components.backends) crossed with every "
        "mix; with one, configurations are named after their mix alone (r1-s0)")
    real_fractions: tuple[float, ...] = Field(
        (1.0,), min_length=1, description="one arm per fraction of the real training cases; an arm below 1 (the "
        "data-scarce case) gets its own real subset, masks, generator, synthetic set and ablation, so no generator "
        "learns from real cases its configurations do not train on")

    @field_validator("real_fractions")
    @classmethod
    def _fractions(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        bad = [f for f in v if not 0.0 < f <= 1.0]
        if bad or len(set(v)) != len(v):
            raise ValueError(f"real_fractions must be distinct numbers in (0, 1]; got {list(v)}")
        return v

    @model_validator(mode="after")
    def _subset_by_arms(self) -> AblationStage:
        if self.config.real_fraction != 1.0:
            raise ValueError("ablation.config.real_fraction: in a pipeline the data-scarce case is an arm with its "
                             "own generator; set ablation.real_fractions (e.g. [1.0, 0.3]) and leave real_fraction 1")
        return self

    def arm_suffix(self, fraction: float) -> str:
        return "" if fraction == 1.0 else "-f" + f"{fraction:g}".replace(".", "p")


class ExportStage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    brats: bool = True
    nnunet: bool = True


class PipelineConfig(BaseModel):
    """The whole DAG's settings (one YAML file)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    workspace: str = "workspace"
    data: DataStage
    masks: MasksStage = MasksStage()
    synthesizer: SynthesizerStage = SynthesizerStage()
    synthesizers: tuple[SynthesizerStage, ...] = Field(
        (), description="several synthesizers crossed in one ablation (instead of `synthesizer`): each trains its own "
        "model on the same real cases and writes its own synthetic set from the same masks; the ablation runs every "
        "ratio once per synthesizer against one shared real-only baseline")
    synthesis: SynthesisStage = SynthesisStage()
    evaluation: EvaluationStage = EvaluationStage()
    export: ExportStage = ExportStage()
    ablation: AblationStage = AblationStage()
    runner: RunnerConfig = RunnerConfig()

    @field_validator("synthesizers")
    @classmethod
    def _distinct(cls, v: tuple[SynthesizerStage, ...]) -> tuple[SynthesizerStage, ...]:
        if len(v) == 1:
            raise ValueError("crosses several synthesizers: list at least two (or use `synthesizer` for one)")
        for what, values in (("name", [s.name for s in v]), ("label (default: the backend)", [s.arm for s in v])):
            if len(set(values)) != len(values):
                raise ValueError(f"every entry needs its own {what}; found {values}")
        return v

    @model_validator(mode="after")
    def _one_way_to_name_synthesizers(self) -> PipelineConfig:
        if self.synthesizers and "synthesizer" in self.model_fields_set:
            raise ValueError("give either `synthesizer` (one) or `synthesizers` (several crossed), not both")
        return self

    @property
    def generators(self) -> tuple[SynthesizerStage, ...]:
        """The synthesizers the pipeline trains: ``synthesizers``, or the one ``synthesizer``."""
        return self.synthesizers or (self.synthesizer,)

    def synthetic_name(self, stage: SynthesizerStage, suffix: str = "") -> str:
        """The synthetic dataset ``stage`` writes: ``synthesis.name``, or ``<synthesis.name>-<label>`` when
        several are crossed (their combination then takes ``synthesis.name``)."""
        base = self.synthesis.name if not self.synthesizers else f"{self.synthesis.name}-{stage.arm}"
        return base + suffix


class ConfigError(InputError):
    """A config file that cannot run; the message is one sentence naming the file, key and value."""


def describe_validation_error(err: ValidationError, source: str) -> str:
    """The first problem of a pydantic error as one sentence: file, key, found value, what is allowed."""
    e = err.errors()[0]
    key = ".".join(str(k) for k in e["loc"]) or "(top level)"
    msg = e["msg"].removeprefix("Value error, ")
    found = e.get("input")
    found_txt = "" if isinstance(found, dict) or e["type"] == "missing" else f" found {found!r}:"
    more = f" (and {len(err.errors()) - 1} more problem(s))" if len(err.errors()) > 1 else ""
    return f"{source}: key {key}:{found_txt} {msg}{more}"


def load_config(path: str | Path) -> PipelineConfig:
    """Read and validate a pipeline config; every stage, profile, schedule and path is checked here,
    before anything runs (ConfigError with one sentence otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"pipeline config {path} does not exist: expected a YAML file such as configs/demo.yaml")
    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a YAML mapping of pipeline stages, found a {type(raw).__name__}")
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err, str(path))) from None


def check_arms(cfg: PipelineConfig, real: Dataset) -> None:
    """Every arm's ratios against what its masks can give, before any generator trains (AblationError)."""
    from components.ablation import AblationConfig, AblationError, real_subset

    abl = cfg.ablation.config
    per_real = cfg.masks.config.per_case * cfg.synthesis.config.samples_per_mask
    for fraction in cfg.ablation.real_fractions:
        n_real = len(real_subset(real, AblationConfig(real_fraction=fraction, subset_seed=abl.subset_seed)))
        need = math.floor(max(abl.ratios) * n_real + 0.5)
        if need > per_real * n_real:
            raise AblationError(
                f"ablation.config.ratios: ratio {max(abl.ratios):g} of arm {fraction:g} needs {need} synthetic cases "
                f"({n_real} real training cases of {real.name!r}), but masks.config.per_case {cfg.masks.config.per_case} "
                f"x synthesis samples_per_mask {cfg.synthesis.config.samples_per_mask} gives at most "
                f"{per_real * n_real}: raise per_case or lower the ratio")
