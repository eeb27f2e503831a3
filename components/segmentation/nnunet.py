"""nnU-Net v2 through its own Python API, with paths set per call from the workspace.

nnU-Net reads ``nnUNet_raw``/``nnUNet_preprocessed``/``nnUNet_results`` lazily from the
environment; :func:`nnunet_paths` sets them for one call and restores the caller's values, so
nothing leaks between runs or into the user's shell.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import random
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from components.devices import resolve_device as _resolve_device

if TYPE_CHECKING:  # torch is imported where it is used: configs validate without it
    import torch

# Named, not __name__: each step runs this file as __main__ and its records are relayed by name.
log = logging.getLogger("components.segmentation.nnunet")


class NnunetSchedule(BaseModel):
    """How long and how nnU-Net trains. The defaults are nnU-Net's own full schedule (GPU)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    configuration: Literal["2d", "3d_fullres", "3d_lowres"] = "3d_fullres"
    epochs: int = Field(1000, ge=1)
    iterations_per_epoch: int = Field(250, ge=1)
    val_iterations_per_epoch: int = Field(50, ge=1)
    use_mirroring: bool = Field(True, description="test-time mirroring at prediction")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_processes: int = Field(2, ge=1, description="processes for fingerprinting and preprocessing")
    augmentation_processes: int | None = Field(None, ge=0,
                                               description="nnUNet_n_proc_DA; 0 = in-process (deterministic)")
    final_validation: bool = Field(False, description="run nnU-Net's own validation after training")
    checkpoint_every: int | None = Field(None, ge=1, description="epochs between nnU-Net's checkpoint_latest.pth, "
                                         "where a killed training resumes (None: nnU-Net's 50)")

    @property
    def reproducible(self) -> bool:
        """True when a seed fixes the run: augmentation in-process (seeded) on the CPU.

        nnU-Net's background augmentation workers draw from their own unseeded generators, and
        cuDNN picks non-deterministic kernels: on those paths a seed is a repeat, not a replay.
        """
        return self.augmentation_processes == 0 and self.device == "cpu"


ScheduleName = Literal["tiny", "cpu-demo", "full"]
SCHEDULES: dict[str, NnunetSchedule] = {
    # nnU-Net's own 2d configuration, 250 iterations: about two minutes per configuration on 2 CPU
    # cores, and the real-only model learns the whole tumour on the 4 mm phantom (WT Dice > 0.7;
    # see docs/ablation.md). Augmentation in-process, so a seed replays the run exactly.
    "cpu-demo": NnunetSchedule(configuration="2d", epochs=5, iterations_per_epoch=50, val_iterations_per_epoch=1,
                               use_mirroring=False, device="cpu", num_processes=2, augmentation_processes=0,
                               checkpoint_every=1),
    # Seconds on 2 CPU cores at 32^3: for tests of the plumbing only.
    "tiny": NnunetSchedule(epochs=1, iterations_per_epoch=2, val_iterations_per_epoch=1,
                           use_mirroring=False, device="cpu", num_processes=1, augmentation_processes=0,
                           checkpoint_every=1),
    "full": NnunetSchedule(),
}


@dataclasses.dataclass(frozen=True)
class TrainedFold:
    """A trained nnU-Net model: its folder, the fold it was trained as and the cases it read."""

    model_dir: Path
    fold: int | str
    train_keys: tuple[str, ...]
    start_epoch: int = 0


def default_schedule() -> str:
    """nnU-Net's own schedule on a GPU; the CPU demo schedule where there is none."""
    import torch

    return "full" if torch.cuda.is_available() else "cpu-demo"


def resolve_device(name: str) -> torch.device:
    return _resolve_device(name, "nnU-Net")


@contextlib.contextmanager
def nnunet_paths(root: str | os.PathLike, augmentation_processes: int | None = None) -> Iterator[dict[str, Path]]:
    """Point nnU-Net at ``<root>/{raw,preprocessed,results}`` for the block, then restore the environment.

    Used inside the isolated step process (see ``_run_isolated``), so the caller's environment is
    never touched.
    """
    root = Path(root).resolve()
    paths = {"nnUNet_raw": root / "raw", "nnUNet_preprocessed": root / "preprocessed", "nnUNet_results": root / "results"}
    env = {k: str(v) for k, v in paths.items()}
    if augmentation_processes is not None:
        env["nnUNet_n_proc_DA"] = str(augmentation_processes)
    for p in paths.values():
        p.mkdir(parents=True, exist_ok=True)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield paths
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """Seed Python/NumPy/torch global RNGs for one call and restore them afterwards.

    nnU-Net draws its augmentation and sampling from the global generators and takes no generator
    argument, so this is the only way to make a training run repeatable; the caller's state is
    restored so nothing else is affected.
    """
    import torch

    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed)  # noqa: NPY002 - nnU-Net only reads the global NumPy RNG
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


# nnU-Net draws 1e8 foreground intensities per channel for its fingerprint however small the dataset
# (bench/fingerprint.py, 7 phantom cases on 2 cores: 32 s and a 5.4 GB peak, against 3.6 s and 1.1 GB);
# they set only CT normalisation, and BraTS MRI channels are z-scored per case, so 1e6 changes no plan.
FINGERPRINT_INTENSITY_SAMPLES = 1_000_000


def fingerprint_intensity_samples(dataset_json: dict) -> int | None:
    """The fingerprint's foreground-intensity sample budget for an nnU-Net dataset.json:
    ``FINGERPRINT_INTENSITY_SAMPLES`` when no channel is normalised with those statistics (CT),
    None (nnU-Net's own budget) otherwise."""
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import CTNormalization
    from nnunetv2.preprocessing.normalization.map_channel_name_to_normalization import get_normalization_scheme

    names = (dataset_json.get("channel_names") or dataset_json.get("modality") or {}).values()
    if any(issubclass(get_normalization_scheme(str(n)), CTNormalization) for n in names):
        return None
    return FINGERPRINT_INTENSITY_SAMPLES


def fingerprint_extractor() -> type:
    """nnU-Net's ``DatasetFingerprintExtractor`` with the sample budget of
    :func:`fingerprint_intensity_samples` (import it where nnU-Net's paths are set)."""
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor

    class MriFingerprintExtractor(DatasetFingerprintExtractor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            samples = fingerprint_intensity_samples(self.dataset_json)
            if samples is not None:
                self.num_foreground_voxels_for_intensitystats = samples

    return MriFingerprintExtractor


def _plan_and_preprocess_here(root: str | os.PathLike, dataset_id: int, schedule: NnunetSchedule, verify: bool = True) -> Path:
    """nnU-Net fingerprint (with its integrity check), experiment planning and preprocessing."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        plan_experiments,
        preprocess,
    )
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

    # No nnUNet_n_proc_DA override here: the planner sizes torch's thread pool with it.
    with nnunet_paths(root) as paths:
        t0 = time.perf_counter()
        extract_fingerprint_dataset(dataset_id, fingerprint_extractor(), num_processes=schedule.num_processes,
                                    check_dataset_integrity=verify, clean=True, verbose=False, show_progress_bar=False)
        plan_experiments([dataset_id])
        preprocess([dataset_id], configurations=(schedule.configuration,), num_processes=(schedule.num_processes,),
                   verbose=False, show_progress_bar=False)
        name = convert_id_to_dataset_name(dataset_id)
        log.info("nnU-Net plan+preprocess %s: %.1f s", name, time.perf_counter() - t0)
        return paths["nnUNet_preprocessed"] / name


def _preprocess_cases_here(root: str | os.PathLike, dataset_id: int, schedule: NnunetSchedule,
                           case_ids: list[str]) -> list[str]:
    """Preprocess raw training cases into an already planned dataset, with its plans unchanged.

    nnU-Net's own ``preprocess`` wipes the configuration's folder and redoes every case; this runs
    its preprocessor on the named cases only, so cases added after planning (the synthetic cases of
    a mix) cost their own preprocessing and nothing else. Returns the ids it preprocessed.
    """
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    with nnunet_paths(root) as paths:
        name = convert_id_to_dataset_name(dataset_id)
        pre = paths["nnUNet_preprocessed"] / name
        plans_manager = PlansManager(str(pre / "nnUNetPlans.json"))
        cm = plans_manager.get_configuration(schedule.configuration)
        dataset_json = json.loads((pre / "dataset.json").read_text())
        files = get_filenames_of_train_images_and_targets(str(paths["nnUNet_raw"] / name), dataset_json)
        out = pre / cm.data_identifier
        missing = [c for c in case_ids if c not in files]
        if missing:
            raise FileNotFoundError(f"nnU-Net dataset {name}: no raw files for cases {missing[:5]}")
        preprocessor = cm.preprocessor_class(verbose=False)
        done = []
        t0 = time.perf_counter()
        for cid in case_ids:
            if (out / f"{cid}.b2nd").is_file():
                continue
            # Written beside, then renamed: nnU-Net lists a case by its .b2nd file, which comes last.
            tmp = out / f".{cid}.partial"
            tmp.mkdir(parents=True, exist_ok=True)
            preprocessor.run_case_save(str(tmp / cid), files[cid]["images"], files[cid]["label"], plans_manager, cm,
                                       dataset_json)
            for suffix in ("_seg.b2nd", ".pkl", ".b2nd"):
                os.replace(tmp / f"{cid}{suffix}", out / f"{cid}{suffix}")
            tmp.rmdir()
            done.append(cid)
        log.info("nnU-Net preprocessed %d added cases of %s in %.1f s", len(done), name, time.perf_counter() - t0)
        return done


def _save_checkpoints_atomically(trainer: Any) -> None:
    """Make the trainer write each checkpoint beside its name and rename it into place.

    nnU-Net writes checkpoints in place: a process killed mid-write leaves a resume point that
    cannot be read. Its ``save_checkpoint`` takes a file name, so wrapping it is enough.
    """
    save = trainer.save_checkpoint

    def save_then_rename(filename: str) -> None:
        partial = f"{filename}.partial"
        save(partial)
        if os.path.isfile(partial):  # nnU-Net skips the write on other ranks or with checkpointing off
            os.replace(partial, filename)

    trainer.save_checkpoint = save_then_rename


def _fold_cases(pre: Path, fold: int | str) -> list[str] | None:
    """The training cases ``splits_final.json`` lists for a fold (None for 'all' or no split file)."""
    split_file = pre / "splits_final.json"
    if fold == "all" or not split_file.is_file():
        return None
    splits = json.loads(split_file.read_text())
    return sorted(splits[int(fold)]["train"]) if int(fold) < len(splits) else None


def _train_here(root: str | os.PathLike, dataset_id: int, schedule: NnunetSchedule, fold: int | str,
                seed: int = 0) -> dict[str, Any]:
    """Train nnUNetTrainer with the schedule's lengths on one fold of ``splits_final.json`` (or 'all').

    Resumable: a fold folder records the schedule, seed and cases it was started with; a training
    killed after a checkpoint continues from nnU-Net's ``checkpoint_latest.pth`` (nnU-Net's own
    resume: weights, optimizer, epoch and logs; the augmentation draws after the resume are not
    those of an uninterrupted run), a finished one is not trained again, and a folder started with
    anything else is cleared. Returns the model folder, the training case ids nnU-Net itself read
    from the split (so a caller can check them against the plan) and the epoch training started at.
    """
    import shutil

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

    from components.io import write_json_atomic

    device = resolve_device(schedule.device)
    with nnunet_paths(root, schedule.augmentation_processes) as paths, seeded_global_rngs(seed):
        name = convert_id_to_dataset_name(dataset_id)
        pre = paths["nnUNet_preprocessed"] / name
        plans = json.loads((pre / "nnUNetPlans.json").read_text())
        dataset_json = json.loads((pre / "dataset.json").read_text())
        out = (paths["nnUNet_results"] / name / f"{nnUNetTrainer.__name__}__{plans['plans_name']}__"
               f"{schedule.configuration}" / f"fold_{fold}")
        data_file = pre / "gliosynth_data.json"  # what the preprocessed cases are (written by the ablation)
        stamp = {"schedule": schedule.model_dump(mode="json"), "seed": seed, "train": _fold_cases(pre, fold),
                 "data": json.loads(data_file.read_text()) if data_file.is_file() else None}
        stamp_file = out / "gliosynth_train.json"
        same = stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp
        finished = same and (out / "checkpoint_final.pth").is_file()
        resume = same and not finished and (out / "checkpoint_latest.pth").is_file()
        if not same and out.exists():
            shutil.rmtree(out)
        def make_trainer(continuing: bool) -> Any:
            # nnunetv2 2.8 reads this key from the plans dict: continue its training log on a resume.
            t = nnUNetTrainer({**plans, "continue_training": continuing}, schedule.configuration, fold, dataset_json,
                              device=device)
            if Path(t.output_folder).resolve() != out.resolve():
                raise RuntimeError(f"nnU-Net trains fold {fold} in {t.output_folder}, expected {out}")
            t.num_epochs = schedule.epochs
            t.num_iterations_per_epoch = schedule.iterations_per_epoch
            t.num_val_iterations_per_epoch = schedule.val_iterations_per_epoch
            if schedule.checkpoint_every is not None:
                t.save_every = schedule.checkpoint_every
            _save_checkpoints_atomically(t)
            return t

        trainer = make_trainer(resume)
        start_epoch = schedule.epochs if finished else 0
        if not same:
            out.mkdir(parents=True, exist_ok=True)
            write_json_atomic(stamp_file, stamp)
        if resume:
            try:
                trainer.load_checkpoint(str(out / "checkpoint_latest.pth"))
            except Exception as err:  # an unreadable resume point costs the epochs, never the run
                log.warning("nnU-Net %s fold %s: checkpoint_latest.pth cannot be read (%s); training from epoch 0",
                            name, fold, err)
                trainer = make_trainer(False)  # nothing half-loaded carries over
            else:
                start_epoch = int(trainer.current_epoch)
                log.info("nnU-Net %s fold %s: resuming from epoch %d of %d (checkpoint_latest.pth)", name, fold,
                         start_epoch, schedule.epochs)
        # The cases nnU-Net itself reads from the split, taken before training uses them.
        train_keys, _ = trainer.do_split()
        t0 = time.perf_counter()
        if finished:
            log.info("nnU-Net %s fold %s: already trained with this schedule, seed and cases", name, fold)
        else:
            trainer.run_training()
            if schedule.final_validation:
                trainer.perform_actual_validation(False)
            log.info("nnU-Net training %s fold %s (%d epochs x %d it): %.1f s", name, fold, schedule.epochs,
                     schedule.iterations_per_epoch, time.perf_counter() - t0)
        return {"model_dir": str(trainer.output_folder_base), "train_keys": sorted(str(k) for k in train_keys),
                "start_epoch": start_epoch}


def _predict_here(model_dir: str | os.PathLike, cases: dict[str, list[Path]], out_dir: str | os.PathLike,
                  schedule: NnunetSchedule, fold: int | str) -> dict[str, Path]:
    """Predict ``{case_id: [t1n, t1c, t2w, t2f]}`` into ``<out_dir>/<case_id>.nii.gz`` (in-process)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    device = resolve_device(schedule.device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    predictor = nnUNetPredictor(
        tile_step_size=0.5, use_gaussian=True, use_mirroring=schedule.use_mirroring,
        perform_everything_on_device=device.type == "cuda", device=device, verbose=False, allow_tqdm=False,
    )
    predictor.initialize_from_trained_model_folder(str(model_dir), use_folds=(fold,),
                                                   checkpoint_name="checkpoint_final.pth")
    ids = sorted(cases)
    # Sequential prediction: no process pools (nothing to guard, nothing to leak on 2 cores).
    predictor.predict_from_files_sequential(
        [[str(p) for p in cases[c]] for c in ids], [str(out_dir / c) for c in ids],
        save_probabilities=False, overwrite=True,
    )
    return {c: out_dir / f"{c}.nii.gz" for c in ids}


# --------------------------------------------------------------------------- isolation
# Each nnU-Net step runs in a fresh Python process. nnU-Net opens fork-based process pools, and
# forking a process that runs Prefect's (or Dask's) threads deadlocks the children; a fresh,
# single-threaded process forks safely. It also keeps nnU-Net's environment variables, global RNG
# seeding and prints out of the caller's process.
# Lines relayed from the step's process: nnU-Net's own ("<date> <time>: <message>", its
# print_to_log_file) and this module's log records there ("<LEVEL> components...: <message>").
# Not relayed (still in the log file): a fold's validation list is its training list by design
# (see components.ablation), and the architecture plot needs a package nnU-Net leaves optional.
NNUNET_QUIET = ("Some validation cases are also in the training set", "Unable to plot network architecture",
                "No module named 'hiddenlayer'")
NNUNET_LINE_RE = re.compile(r"^(?:\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:\.\d+)?|(?P<level>INFO|WARNING|ERROR) "
                            r"components\.[\w.]+): (?P<msg>.+)$")


def _run_isolated(step: str, args: dict[str, Any], log_file: Path, label: str = "", gpu: str | None = None) -> Any:
    """Run one nnU-Net step in a fresh process; its output goes to ``log_file`` and, line by line
    as it happens, nnU-Net's own messages (epoch, losses, pseudo Dice, epoch time) to this
    module's logger, so a long training can be watched in the Prefect log."""
    import subprocess
    import sys
    import tempfile

    log_file.parent.mkdir(parents=True, exist_ok=True)
    fd, result_file = tempfile.mkstemp(prefix=f"nnunet-{step}-", suffix=".json")
    os.close(fd)
    cmd = [sys.executable, "-m", "components.segmentation.nnunet", step, json.dumps(args), result_file]
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(repo), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"  # nnU-Net prints; unbuffered, each line arrives when it is printed
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu  # the step sees its one GPU as cuda:0
    tag = f"nnU-Net {step}{' ' + label if label else ''}"
    t0 = time.perf_counter()
    env["PYTHONIOENCODING"] = "utf-8"
    with open(log_file, "a", encoding="utf-8") as fh:
        proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                encoding="utf-8", errors="replace")
        try:
            for line in proc.stdout or ():
                fh.write(line)
                fh.flush()
                m = NNUNET_LINE_RE.match(line.rstrip())
                if m and m.group("msg").strip() and not any(q in m.group("msg") for q in NNUNET_QUIET):
                    log.log(logging.getLevelName(m.group("level") or "INFO"), "%s: %s", tag, m.group("msg").strip())
            returncode = proc.wait()
        finally:
            if proc.poll() is None:  # the relay failed (e.g. a full disk): never leave the step running
                proc.kill()
                proc.wait()
    try:
        if returncode != 0:
            tail = log_file.read_text(encoding="utf-8", errors="replace")[-3000:]
            raise RuntimeError(f"nnU-Net {step} failed (exit {returncode}); log {log_file}:\n{tail}")
        log.info("%s: %.1f s (log %s)", tag, time.perf_counter() - t0, log_file)
        return json.loads(Path(result_file).read_text(encoding="utf-8"))
    finally:
        Path(result_file).unlink(missing_ok=True)


def plan_and_preprocess(root: str | os.PathLike, dataset_id: int, schedule: NnunetSchedule, verify: bool = True) -> Path:
    """nnU-Net fingerprint (with its integrity check), experiment planning and preprocessing."""
    out = _run_isolated("plan", {"root": str(root), "dataset_id": dataset_id, "schedule": schedule.model_dump(),
                                 "verify": verify}, Path(root) / "logs" / f"plan_{dataset_id}.log")
    return Path(out)


def preprocess_cases(root: str | os.PathLike, dataset_id: int, schedule: NnunetSchedule, case_ids: list[str]) -> list[str]:
    """Preprocess cases added to a planned dataset's raw folder with its existing plans (see ``_preprocess_cases_here``)."""
    out = _run_isolated("add", {"root": str(root), "dataset_id": dataset_id, "schedule": schedule.model_dump(),
                                "case_ids": list(case_ids)}, Path(root) / "logs" / f"plan_{dataset_id}.log")
    return list(out)


def train(root: str | os.PathLike, dataset_id: int, schedule: NnunetSchedule, fold: int | str = "all",
          seed: int = 0, gpu: str | None = None) -> TrainedFold:
    """Train nnUNetTrainer with the schedule's lengths (seeded) on one fold; see ``_train_here``."""
    out = _run_isolated("train", {"root": str(root), "dataset_id": dataset_id, "schedule": schedule.model_dump(),
                                  "fold": fold, "seed": seed},
                        Path(root) / "logs" / f"train_{dataset_id}_fold{fold}.log", label=f"fold {fold}", gpu=gpu)
    return TrainedFold(model_dir=Path(out["model_dir"]), fold=fold, train_keys=tuple(out["train_keys"]),
                       start_epoch=int(out.get("start_epoch", 0)))


def predict(model_dir: str | os.PathLike, cases: dict[str, list[Path]], out_dir: str | os.PathLike,
            schedule: NnunetSchedule, fold: int | str = "all", gpu: str | None = None) -> dict[str, Path]:
    """Predict ``{case_id: [t1n, t1c, t2w, t2f]}`` into ``<out_dir>/<case_id>.nii.gz`` with one fold's model."""
    out = _run_isolated("predict", {"model_dir": str(model_dir), "cases": {k: [str(p) for p in v] for k, v in cases.items()},
                                    "out_dir": str(out_dir), "schedule": schedule.model_dump(), "fold": fold},
                        Path(out_dir) / "predict.log", gpu=gpu)
    return {k: Path(v) for k, v in out.items()}


def _main(argv: list[str]) -> None:
    """Child-process entry: ``STEP ARGS_JSON RESULT_FILE``; the result is written as JSON."""
    from components.io import write_json_atomic

    step, args, result_file = argv[0], json.loads(argv[1]), argv[2]
    schedule = NnunetSchedule(**args.pop("schedule"))
    if step == "plan":
        res: Any = str(_plan_and_preprocess_here(args["root"], args["dataset_id"], schedule, args["verify"]))
    elif step == "add":
        res = _preprocess_cases_here(args["root"], args["dataset_id"], schedule, args["case_ids"])
    elif step == "train":
        res = _train_here(args["root"], args["dataset_id"], schedule, args["fold"], args["seed"])
    elif step == "predict":
        cases = {k: [Path(p) for p in v] for k, v in args["cases"].items()}
        res = {k: str(v) for k, v in _predict_here(args["model_dir"], cases, args["out_dir"], schedule,
                                                   args["fold"]).items()}
    else:
        raise SystemExit(f"unknown nnU-Net step {step!r}")
    write_json_atomic(result_file, res)


if __name__ == "__main__":  # nnU-Net's spawn pools re-import the main module: keep this guard
    import sys

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _main(sys.argv[1:])
