"""The three kinds of backend (synthesizer, segmenter, mask source), what each must do, and a
registry of each kind keyed by name.

A backend is any object with the methods of its protocol below; a registry maps a name to a
factory (a zero-argument callable, e.g. the class) that makes one. Built-in backends are
registered lazily in ``components/backends/__init__.py`` (their modules import torch, MONAI or
nnU-Net only when a method runs), so a config naming one is checked without importing them.

A backend registered at run time (``register_synthesizer("toy", ToySynthesizer)``) exists in that
process only: task runners that run tasks in other processes (Dask) see only backends registered
by an imported module, such as the registry lines of ``components/backends/__init__.py``.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from pydantic import BaseModel

from components.errors import InputError

if TYPE_CHECKING:  # type names only: importing them here would load the ablation at config time
    from components.ablation import AblationConfig, MixPlan
    from components.synthesis.config import SynthesizeConfig
    from data_catalog import Dataset

T = TypeVar("T")


# --------------------------------------------------------------------------- summaries
class Summary(Protocol):
    """What a stage returns: a name and one printable line (a dataclass, so it travels as a dict)."""

    name: str

    def line(self) -> str: ...


class TrainSummary(Summary, Protocol):
    """A trained synthesizer (``components.synthesis.training.TrainResult`` for ddpm; ``ModelSummary`` for others)."""

    model_dir: Path
    seconds: float          # wall time of this call
    train_seconds: float    # wall time of all training, summed over resumed runs
    montage: Path | None
    run_id: str | None


class DatasetSummary(Summary, Protocol):
    """A dataset a stage wrote (``components.synthesis.writer.SynthesisSummary`` for synthesis)."""

    n_ok: int


class MasksSummary(DatasetSummary, Protocol):
    """A masks dataset (``components.masks.AugmentSummary`` for augment)."""

    def report(self) -> str: ...


@dataclasses.dataclass
class ModelSummary:
    """A ready-made TrainSummary for a new synthesizer."""

    name: str
    model_dir: Path
    seconds: float
    train_seconds: float
    montage: Path | None = None
    run_id: str | None = None
    note: str = ""

    def line(self) -> str:
        note = f"; {self.note}" if self.note else ""
        return f"{self.name}: trained in {self.seconds:.1f} s{note} -> {self.model_dir}"


def summary_dict(summary: Summary) -> dict[str, Any]:
    """A summary as the plain dict a task returns: its fields (paths as text), ``line`` and, for a
    masks dataset, ``report``."""
    out = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(summary).items()}
    out["line"] = summary.line()
    if hasattr(summary, "report"):
        out["report"] = summary.report()
    return out


# --------------------------------------------------------------------------- the three interfaces
class Synthesizer(Protocol):
    """Trains a generator on a dataset and writes synthetic datasets from a masks dataset.

    The model lives in ``<workspace>/models/<name>/`` with a card that names the dataset and the
    real cases it learnt from; a synthetic dataset records them as ``generator_dataset`` and
    ``generator_train_cases`` in its dataset.json and links each case to its ``mask_case`` and its
    real ``source_case`` (``components.synthesis.writer`` writes that contract), which is what the
    ablation's leak check reads.
    """

    def check_profile(self, profile: str) -> None:
        """Refuse (InputError, one sentence) a profile this backend cannot load; cheap, no torch."""

    def resolve_config(self, profile: str, steps: int | None = None, config: BaseModel | None = None) -> BaseModel:
        """The training config: ``config`` if given, else ``profile``'s; ``steps`` overrides its length."""

    def train(self, workspace: str | Path, dataset: str, name: str, config: BaseModel, *,
              resume: bool | str = False, track: bool = True) -> TrainSummary:
        """Train (or resume: True, or 'auto' for the pipeline's policy) model ``name`` on ``dataset``'s train split."""

    def model_files(self, workspace: str | Path, name: str) -> list[Path]:
        """The files a trained model has: a cached training whose files are gone runs again."""

    def weights_digest(self, workspace: str | Path, model: str) -> str:
        """A digest of the trained weights (the synthesis cache key); refuses an untrained model."""

    def synthesize(self, workspace: str | Path, model: str, masks: str, name: str,
                   config: SynthesizeConfig) -> DatasetSummary:
        """Write and register the synthetic dataset ``name``: ``config.samples_per_mask`` cases per ok mask."""

    # Optional: ``dataset_metrics(workspace, name) -> dict[str, float]``, scores of a written dataset
    # that only this backend can compute (sbldm: controllability errors and the mask pass rate); the
    # pipeline logs them on the ablation's parent run beside FID/KID/MS-SSIM.


@dataclasses.dataclass(frozen=True)
class FittedSegmenter:
    """A segmenter fitted on one configuration's mix."""

    model_dir: Path
    train_keys: tuple[str, ...]   # the cases it read, as it reports them (checked against the plan)
    label: str                    # how messages name it, e.g. "nnU-Net fold 3"
    record: dict[str, Any] = dataclasses.field(default_factory=dict)  # kept in the configuration's mix.json


class Segmenter(Protocol):
    """Fits on a mix of real and synthetic cases and predicts label maps of held-out cases."""

    label: str  # how figures name it, e.g. "nnU-Net"

    def prepare(self, workspace: str | Path, ablation: str, plans: Sequence[MixPlan], real: Dataset,
                synthetic: Dataset | None, config: AblationConfig) -> dict[str, Any]:
        """Work shared by the ablation's configurations (e.g. planning on the real cases once);
        returns plain JSON-able data handed back to ``params``, ``fit`` and ``predict``."""

    def params(self, plan: MixPlan, config: AblationConfig, data: Mapping[str, Any]) -> dict[str, Any]:
        """What a configuration's MLflow run records about the segmenter; ``device`` 'cuda' claims a GPU."""

    def fit(self, plan: MixPlan, config: AblationConfig, data: Mapping[str, Any], gpu: str | None) -> FittedSegmenter:
        """Train on exactly ``plan.train_ids`` (seeded by ``plan.seed``)."""

    def predict(self, model: FittedSegmenter, cases: Mapping[str, Sequence[Path]], out_dir: Path,
                config: AblationConfig, data: Mapping[str, Any], gpu: str | None) -> dict[str, Path]:
        """Label maps of ``{case_id: [t1n, t1c, t2w, t2f]}`` in the cases' label scheme, one NIfTI per case."""

    # Optional: ``metrics(predictions_dir) -> dict[str, float]`` and ``artifacts(predictions_dir) -> list[Path]``,
    # what only this segmenter measures or draws of its predictions (ldmseg: variance against error, the
    # variance maps and the calibration figure); the configuration's MLflow run logs them (artifacts
    # under ``segmenter/``) and summary.csv keeps the metrics.


class MaskSource(Protocol):
    """Makes a masks dataset (augmented or new tumour masks) from a labelled dataset."""

    def make(self, workspace: str | Path, source: str, name: str, config: BaseModel) -> MasksSummary:
        """Write and register the masks dataset ``name`` from dataset ``source``."""

    def outputs(self, workspace: str | Path, name: str) -> list[Path]:
        """The files a made masks dataset has: a cached run whose files are gone runs again."""

    def figures(self, workspace: str | Path, name: str, n_cases: int) -> dict[str, Any]:
        """Draw the dataset's figures; returns their paths by name (e.g. montage, features)."""

    def figure_files(self, workspace: str | Path, name: str) -> list[Path]:
        """The files ``figures`` writes."""


# --------------------------------------------------------------------------- registries
def lazy(module: str, attr: str) -> Callable[[], Any]:
    """A factory that imports ``module`` only when a backend is asked for, then calls ``attr``."""

    def make() -> Any:
        return getattr(importlib.import_module(module), attr)()

    make.__qualname__ = f"lazy({module}.{attr})"
    return make


class Registry(Generic[T]):
    """Backends of one kind by name."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[[], T]] = {}

    def names(self) -> list[str]:
        return sorted(self._factories)

    def register(self, name: str, factory: Callable[[], T], *, replace: bool = False) -> None:
        """Add backend ``name``; refuses to replace a registered one unless ``replace``."""
        if not name or not name.replace("-", "").replace("_", "").isalnum():
            raise InputError(f"{self.kind} backend name {name!r}: use letters, digits, '-' and '_'")
        if name in self._factories and not replace:
            raise InputError(f"{self.kind} backend {name!r} is already registered (pass replace=True to replace it)")
        self._factories[name] = factory

    def unregister(self, name: str) -> None:
        self._factories.pop(name, None)

    def check(self, name: str) -> str:
        """``name`` if registered, else InputError naming it and the known ones."""
        if name not in self._factories:
            raise InputError(f"unknown {self.kind} backend {name!r}: known {self.kind} backends are "
                             f"{', '.join(self.names()) or 'none'}")
        return name

    def check_all(self, names: Iterable[str]) -> tuple[str, ...]:
        """A non-empty list of distinct registered names."""
        names = tuple(names)
        if not names:
            raise InputError(f"expected at least one {self.kind} backend (known: {', '.join(self.names())})")
        if len(set(names)) != len(names):
            raise InputError(f"{self.kind} backends repeat: {list(names)}")
        for n in names:
            self.check(n)
        return names

    def get(self, name: str) -> T:
        """A backend of this kind (InputError for an unknown name)."""
        return self._factories[self.check(name)]()


SYNTHESIZERS: Registry[Synthesizer] = Registry("synthesizer")
SEGMENTERS: Registry[Segmenter] = Registry("segmenter")
MASK_SOURCES: Registry[MaskSource] = Registry("mask source")
