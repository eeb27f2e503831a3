"""Pieces shared by the command-line verbs: the workspace flag, what a verb reads, and the checks of
both before any flow starts (so a typo answers in a second, in one sentence)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from components.errors import InputError


def workspace_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workspace", default="workspace",
                   help="workspace folder holding datasets, models, runs (default: ./workspace)")


def reads(p: argparse.ArgumentParser, *, datasets: Sequence[str] = (), models: Sequence[str] = (),
          folders: Sequence[str] = (), datasets_or_folders: Sequence[str] = (), workspace: bool = True) -> None:
    """Declare what a verb reads (argument names): checked by :func:`check_inputs` before its flow starts."""
    p.set_defaults(reads_workspace=workspace, reads_datasets=tuple(datasets), reads_models=tuple(models),
                   reads_folders=tuple(folders), reads_datasets_or_folders=tuple(datasets_or_folders))


def flag(name: str, positional: bool = False) -> str:
    return name.upper() if positional else "--" + name.replace("_", "-")


def check_inputs(a: argparse.Namespace) -> None:
    """The workspace, datasets, models and folders a verb reads exist (InputError naming the flag otherwise)."""
    from data_catalog import CatalogError, open_dataset

    ws = Path(getattr(a, "workspace", None) or "workspace")
    if getattr(a, "reads_workspace", False) and not ws.is_dir():
        raise InputError(f"{a.verb} --workspace {ws}: no such folder; expected the workspace that holds datasets/ and "
                         f"models/ (create one with `phantom`, `ingest` or `pipeline`)")
    for name in getattr(a, "reads_folders", ()):
        value = getattr(a, name, None)
        if value is not None and not Path(value).is_dir():
            raise InputError(f"{a.verb} {flag(name, name == 'source')} {value}: no such folder"
                             + ("; expected a BraTS or MSD release folder" if a.verb == "ingest" else ""))
    for name in getattr(a, "reads_datasets_or_folders", ()):
        value = getattr(a, name, None)
        if value is not None and not Path(value).is_dir() and not (ws / "datasets" / value / "dataset.json").is_file():
            raise InputError(f"{a.verb} {flag(name)} {value}: neither a folder nor a dataset of workspace {ws}")
    from components.backends import DEFAULT_SYNTHESIZER, get_synthesizer

    # a model is checked by the backend that trained it (its weights_digest refuses an untrained one)
    synthesizer = get_synthesizer(getattr(a, "backend", None) or DEFAULT_SYNTHESIZER)
    checks = [(name, lambda v: open_dataset(ws, v)) for name in getattr(a, "reads_datasets", ())]
    checks += [(name, lambda v: synthesizer.weights_digest(ws, v)) for name in getattr(a, "reads_models", ())]
    for name, check in checks:
        value = getattr(a, name, None)
        if value is not None:
            try:
                check(value)
            except (CatalogError, InputError) as err:
                raise InputError(f"{a.verb} {flag(name)} {value}: {err}") from None


def describe_option_error(err, verb: str) -> str:
    """The first problem of a pydantic ValidationError raised while a verb builds its config, as one
    sentence naming the option, the value found and what is allowed."""
    e = err.errors()[0]
    names = [str(k) for k in e["loc"] if isinstance(k, str)]
    where = flag(names[-1]) if names else "options"
    msg = e["msg"].removeprefix("Value error, ")
    found = e.get("input")
    found_txt = "" if isinstance(found, dict) or e["type"] == "missing" else f" found {found!r}:"
    more = f" (and {len(err.errors()) - 1} more problem(s))" if len(err.errors()) > 1 else ""
    return f"{verb} {where}:{found_txt} {msg}{more}"
