#!/usr/bin/env python
"""`python tools/detect.py ...` is `yolodet detect ...`: the same options, exit codes and code path
(see `yolodet detect --help`)."""

from __future__ import annotations

import argparse
import sys

from yolodet.cli.main import run_subcommand, subcommand_parser


def get_args_parser() -> argparse.ArgumentParser:
    return subcommand_parser("detect")


def main(args: argparse.Namespace) -> int:
    return run_subcommand("detect", args)


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
