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

from flows.cli_common import check_inputs, describe_option_error
from flows.settings import configure_workspace


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gliosynth", description="gliosynth: BraTS synthetic-data pipeline "
                                     "(`gliosynth VERB` and `python -m flows VERB` are the same command)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    # Each stage keeps its verbs in flows/cli_<stage>.py with a register(sub) function.
    for info in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda m: m.name):
        if info.name.startswith("cli_") and info.name != "cli_common":
            importlib.import_module(f"flows.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "numexpr"):  # one line per HTTP request to Prefect's API is noise
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    from pydantic import ValidationError

    from components.errors import GliosynthError

    try:
        workspace = getattr(args, "workspace", None)
        if getattr(args, "config", None) and args.verb == "pipeline":
            from flows.pipeline_config import load_config

            cfg = load_config(args.config)  # every key checked before Prefect starts
            workspace = workspace or cfg.workspace
        check_inputs(args)  # the workspace, datasets, models and folders the verb reads, before Prefect starts
        configure_workspace(workspace or "workspace")
        importlib.import_module("flows.signals").exit_promptly_on_sigterm()  # a SIGTERM ends the run in seconds
        return args.handler(args)
    except (GliosynthError, ValidationError) as err:  # input a user can fix: one sentence, no traceback
        msg = describe_option_error(err, args.verb) if isinstance(err, ValidationError) else str(err)
        print(f"error: {msg}", file=sys.stderr)
        if args.verbose:
            raise
        return 2


if __name__ == "__main__":  # nnU-Net's spawn pools re-import the main module: keep this guard
    sys.exit(main())
