"""Verb: serve (local Prefect server + worker + deployments)."""

from __future__ import annotations

import argparse

from flows.cli_common import workspace_arg


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="start a local Prefect server and worker on 127.0.0.1 and deploy prefect.yaml",
                       description="Start `prefect server` on 127.0.0.1 over the workspace's Prefect home "
                       "(<workspace>/.prefect), create the process work pool, deploy every deployment of prefect.yaml "
                       "(schedules included, writing to this workspace) and run a worker until interrupted. While it "
                       "runs, command-line runs on the workspace report to it and `PREFECT_HOME=<workspace>/.prefect "
                       "prefect deployment run ...` works from any shell. One server per workspace.")
    p.add_argument("--port", type=int, default=4200, help="server port on 127.0.0.1 (default: 4200)")
    workspace_arg(p)
    p.set_defaults(handler=lambda a: __import__("flows.serve", fromlist=["serve_forever"]).serve_forever(
        a.port, a.workspace))


def register(sub: argparse._SubParsersAction) -> None:
    _add_serve(sub)
