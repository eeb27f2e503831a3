"""Command line: ``python -m flows <verb> ...`` (one verb per stage).

Each verb is a small argparse function that builds the stage's typed config and runs its Prefect
flow. Prefect's home is set inside the workspace before Prefect is imported.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from pathlib import Path

from flows.settings import configure_workspace


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flows", description="gliosynth: BraTS synthetic-data pipeline")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    # Each stage keeps its verbs in flows/cli_<stage>.py with a register(sub) function.
    for info in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda m: m.name):
        if info.name.startswith("cli_") and info.name != "cli_common":
            importlib.import_module(f"flows.{info.name}").register(sub)
    return parser


# Verbs that read what earlier stages wrote: a mistyped --workspace is an error, never a new folder.
READS_WORKSPACE = {"datasets", "ablation", "augment-masks", "evaluate-synthesis", "export", "synthesize",
                   "train-synthesizer"}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "numexpr"):  # one line per HTTP request to Prefect's API is noise
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        workspace = getattr(args, "workspace", None)
        if getattr(args, "config", None) and args.verb == "pipeline":
            from flows.pipeline_config import load_config

            cfg = load_config(args.config)  # every key checked before Prefect starts
            workspace = workspace or cfg.workspace
        if args.verb in READS_WORKSPACE and not Path(workspace or "workspace").is_dir():
            raise ValueError(f"workspace {workspace or 'workspace'} does not exist: expected the folder that holds "
                             f"datasets/ and models/ (create one with `phantom`, `ingest` or `pipeline`)")
        configure_workspace(workspace or "workspace")
        return args.handler(args)
    except Exception as err:  # one clear line for the user; details with -v
        from components.brats import IngestError
        from data_catalog import CatalogError

        if isinstance(err, (IngestError, CatalogError, ValueError)):
            print(f"error: {err}", file=sys.stderr)
            if args.verbose:
                raise
            return 2
        raise


if __name__ == "__main__":  # nnU-Net's spawn pools re-import the main module: keep this guard
    sys.exit(main())
