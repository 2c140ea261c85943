#!/usr/bin/env python
"""`python tools/calc_anchors.py ...` is `yolodet anchors ...`: the same options, exit codes and code path
(see `yolodet anchors --help`)."""

from __future__ import annotations

import argparse
import sys

from yolodet.cli.main import run_subcommand, subcommand_parser


def get_args_parser() -> argparse.ArgumentParser:
    return subcommand_parser("anchors")


def main(args: argparse.Namespace) -> int:
    return run_subcommand("anchors", args)


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
