"""Pieces shared by the command-line verbs."""

from __future__ import annotations

import argparse


def workspace_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workspace", default="workspace",
                   help="workspace folder holding datasets, models, runs (default: ./workspace)")
