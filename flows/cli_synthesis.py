"""Verbs of the synthesizer stage: train-synthesizer, synthesize."""

from __future__ import annotations

import argparse

from flows.cli_common import reads, workspace_arg


def _add_train(sub: argparse._SubParsersAction) -> None:
    from components.synthesis.config import list_profiles

    p = sub.add_parser(
        "train-synthesizer", help="train a mask-conditioned diffusion model on a dataset's train split",
        description="Train a 3-D DDPM (MONAI DiffusionModelUNet; the one-hot mask - background, head, tumour labels - "
        "concatenated to the noisy 4-modality image at every step; profiles with diffusion.prior also give it the train "
        "cases' mean healthy anatomy, saved with the weights) on the train-split cases of DATASET. The model "
        "lives in <workspace>/models/<name>/ (config.json, checkpoints/, ema.pt, stats.json, train_log.csv, "
        "montage.png); the loss curve and a real-vs-synthetic montage go to MLflow (<workspace>/mlflow).",
    )
    p.add_argument("--dataset", required=True, help="dataset to train on (its train split only)")
    p.add_argument("--name", required=True, help="model name (folder under <workspace>/models/)")
    p.add_argument("--profile", default="cpu-demo",
                   help=f"settings profile: one of {', '.join(list_profiles())} (configs/synthesizer/) or a YAML "
                        "path (default: cpu-demo)")
    p.add_argument("--steps", type=int, default=None, help="total optimizer steps (default: the profile's)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the model's last checkpoint, exactly as if never interrupted")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    workspace_arg(p)
    reads(p, datasets=("dataset",))
    p.set_defaults(handler=_run_train)


def _run_train(a: argparse.Namespace) -> int:
    from components.errors import InputError
    from components.synthesis.config import load_profile
    from flows.synthesis import TrainSynthesizerParams, train_synthesizer_flow

    try:
        load_profile(a.profile)  # a typo'd profile answers before the flow starts
    except InputError as err:
        raise InputError(f"train-synthesizer --profile {a.profile}: {err}") from None
    out = train_synthesizer_flow(TrainSynthesizerParams(
        workspace=a.workspace, dataset=a.dataset, name=a.name, profile=a.profile, steps=a.steps, resume=a.resume,
        track=not a.no_mlflow))
    print(out["line"])
    print(f"training time: {out['train_seconds']:.1f} s (training steps), {out['seconds']:.1f} s (this call)")
    if out.get("montage"):
        print(f"montage: {out['montage']}")
    return 0


def _add_synthesize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synthesize", help="sample a synthetic dataset from a trained model and a set of masks",
        description="Generate four modalities for every ok mask of MASKS (a masks dataset, or a real/phantom dataset "
        "whose segs are used) with a trained model, and write a dataset of kind 'synthetic' in the workspace contract "
        "(the mask's seg and head, the mask's affine, zero outside the head, a quality score per case). A killed run "
        "resumes: cases already written are kept. A model without a trained checkpoint is refused.",
    )
    p.add_argument("--model", required=True, help="trained model name (under <workspace>/models/)")
    p.add_argument("--masks", required=True, help="masks dataset, or a real/phantom dataset used for its segs")
    p.add_argument("--name", required=True, help="name of the synthetic dataset to write")
    p.add_argument("--sampler", choices=["ddim", "ddpm"], default=None,
                   help="ddim or ddpm (the full-length ancestral reference, T steps); default: the model profile's "
                        "(sample.sampler in its config.json)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (DDIM; default: the model profile's)")
    p.add_argument("--eta", type=float, default=None,
                   help="DDIM noise weight, 0 (deterministic) to 1; default: the model profile's")
    p.add_argument("--seed", type=int, default=0, help="run seed; each case's seed is recorded in the manifest")
    p.add_argument("--batch", type=int, default=None, help="volumes sampled together (default: the model profile's)")
    p.add_argument("--samples-per-mask", type=int, default=1, help="synthetic cases per mask (default: 1)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: cuda when available")
    p.add_argument("--montage-cases", type=int, default=2,
                   help="cases in the synthetic-vs-real montage (<name>/montage.png; default: 2, 0: none)")
    workspace_arg(p)
    reads(p, datasets=("masks",), models=("model",))
    p.set_defaults(handler=_run_synthesize)


def _run_synthesize(a: argparse.Namespace) -> int:
    from components.synthesis.config import SynthesizeConfig
    from flows.synthesis import SynthesizeParams, synthesize_flow

    cfg = SynthesizeConfig(sampler=a.sampler, steps=a.steps, eta=a.eta, seed=a.seed, batch=a.batch,
                           samples_per_mask=a.samples_per_mask, device=a.device,
                           montage_cases=a.montage_cases)
    out = synthesize_flow(SynthesizeParams(workspace=a.workspace, model=a.model, masks=a.masks, name=a.name, config=cfg))
    print(out["line"])
    if out.get("montage"):
        print(f"montage: {out['montage']}")
    return 0 if out["n_ok"] > 0 else 1


def register(sub: argparse._SubParsersAction) -> None:
    for add in (_add_train, _add_synthesize):
        add(sub)
