"""Command line: ``gliosynth VERB ...`` or ``python -m flows VERB ...`` (one verb per stage).

The verbs, the flow each runs and the component that does its work are the table in flows/cli.py;
each verb's flags are made from the pydantic models of its flow (flows/flags.py). Only the chosen
verb's models are imported, so a bad flag answers in a second. Prefect's home is set inside the
workspace before Prefect is imported.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path

from flows.cli import VERBS
from flows.cli_common import check_inputs, describe_option_error, reads
from flows.flags import add_flags, collect
from flows.settings import configure_workspace, temporary_server_settings


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """All verbs with their help; the flags of the verb named in ``argv`` (every verb's when None)."""
    parser = argparse.ArgumentParser(prog="gliosynth", description="gliosynth: BraTS synthetic-data pipeline "
                                     "(`gliosynth VERB` and `python -m flows VERB` are the same command)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    chosen = None if argv is None else next((a for a in argv if a in VERBS), "")
    for verb in VERBS.values():
        p = sub.add_parser(verb.name, help=verb.help, description=f"{verb.description} [flow: {verb.flow}; "
                           f"the work: {verb.work}]")
        if chosen is None or verb.name == chosen:
            specs = verb.flags()
            for spec in specs:
                add_flags(p, spec)
            if verb.extra:
                verb.extra(p)
            reads(p, **verb.reads)
            p.set_defaults(handler=verb.run, flag_specs=specs)
    return parser


def _workspace_of(verb: str, argv: list[str]) -> str:
    """The workspace a command works on, read before Prefect is imported (its home must be set first):
    ``--workspace``, else the pipeline config's, else ``workspace``."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--workspace", default=None)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if verb == "pipeline" and known.workspace is None:
        from flows.pipeline_config import load_config

        return load_config(known.config or "configs/demo.yaml").workspace  # every key checked before Prefect starts
    return known.workspace or "workspace"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    verb = next((a for a in argv if a in VERBS), None)
    verbose = "-v" in argv or "--verbose" in argv
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "numexpr"):  # one line per HTTP request to Prefect's API is noise
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
    from pydantic import ValidationError

    from components.errors import GliosynthError, InputError

    try:
        if verb is not None and not {"-h", "--help"} & set(argv):
            workspace = _workspace_of(verb, argv)
            if VERBS[verb].reads.get("workspace", True) and not Path(workspace).is_dir():
                raise InputError(f"{verb} --workspace {workspace}: no such folder; expected the workspace that holds "
                                 "datasets/ and models/ (create one with `phantom`, `ingest` or `pipeline`)")
            configure_workspace(workspace)  # before the verb's flows import Prefect
        args = build_parser(argv).parse_args(argv)
        if args.verb != "pipeline" and getattr(args, "workspace", "") is None:
            args.workspace = "workspace"  # the verbs' own default (pipeline: the config's workspace)
        if args.verb == "pipeline":
            from flows.pipeline_config import load_config

            load_config(args.config or "configs/demo.yaml")
        check_inputs(args)  # the datasets, models and folders the verb reads, before Prefect starts
        from flows.signals import exit_promptly_on_sigterm

        exit_promptly_on_sigterm()  # a SIGTERM ends the run in seconds
        no_prefect = verb is None or {"-h", "--help"} & set(argv)
        with contextlib.nullcontext() if no_prefect else temporary_server_settings():
            return args.handler(args, collect(args, args.flag_specs))
    except (GliosynthError, ValidationError) as err:  # input a user can fix: one sentence, no traceback
        msg = describe_option_error(err, verb or "gliosynth") if isinstance(err, ValidationError) else str(err)
        print(f"error: {msg}", file=sys.stderr)
        if verbose:
            raise
        return 2


if __name__ == "__main__":  # nnU-Net's spawn pools re-import the main module: keep this guard
    sys.exit(main())
