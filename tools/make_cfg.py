#!/usr/bin/env python
"""`python tools/make_cfg.py ...` is `yolodet make-cfg ...`: the same options, exit codes and code path
(see `yolodet make-cfg --help`)."""

from __future__ import annotations

import argparse
import sys

from yolodet.cli.main import run_subcommand, subcommand_parser


def get_args_parser() -> argparse.ArgumentParser:
    return subcommand_parser("make-cfg")


def main(args: argparse.Namespace) -> int:
    return run_subcommand("make-cfg", args)


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
