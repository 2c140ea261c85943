#!/usr/bin/env python
"""`python tools/eval_coco.py ...` is `yolodet val ...`: the same options, exit codes and code path
(see `yolodet val --help`)."""

from __future__ import annotations

import argparse
import sys

from yolodet.cli.main import run_subcommand, subcommand_parser


def get_args_parser() -> argparse.ArgumentParser:
    return subcommand_parser("val")


def main(args: argparse.Namespace) -> int:
    return run_subcommand("val", args)


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
