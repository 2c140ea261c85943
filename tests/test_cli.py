"""yolodet.cli: the tools' shared options parse to what Detector expects and bad thread counts are caught."""

from __future__ import annotations

import argparse

import pytest

from yolodet.cli.options import add_precision_options, add_threads_option, threads_problem
from yolodet.inference.optimize import resolve_precision


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_precision_options(p)
    add_threads_option(p)
    return p


@pytest.mark.parametrize(("argv", "precision", "threads"), [
    ([], "fp32", None), (["--half"], "half", None), (["--precision", "bf16", "--threads", "3"], "bf16", 3)])
def test_options_parse(argv: list[str], precision: str, threads: int | None) -> None:
    args = _parser().parse_args(argv)
    assert (args.precision, args.threads) == (precision, threads)
    assert resolve_precision(args.precision, "cpu")  # every parsed value is one the Detector accepts on the CPU


def test_bad_values_refused() -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["--half", "--precision", "bf16"])  # one or the other
    with pytest.raises(SystemExit):
        _parser().parse_args(["--precision", "int4"])
    assert threads_problem(0) == "--threads must be >= 1, got 0" and threads_problem(None) is None
    assert threads_problem(2) is None
