"""Command-line options the tools share (``tools/detect.py``, ``tools/eval_coco.py``): the network precision and
torch's CPU threads, with one spelling, one help text and one check."""

from __future__ import annotations

import argparse

from yolodet.inference.optimize import PRECISIONS

__all__ = ["add_precision_options", "add_threads_option", "threads_problem"]


def add_precision_options(p: argparse.ArgumentParser) -> None:
    """``--precision fp32|bf16|fp16`` or ``--half`` (the device's fast mode) -> ``args.precision``."""
    prec = p.add_mutually_exclusive_group()
    prec.add_argument("--precision", choices=PRECISIONS, default="fp32",
                      help="network precision: fp32 (default), bf16 (fast on CPUs with native bf16), fp16 (CUDA); "
                           "decoding and NMS stay fp32")
    prec.add_argument("--half", dest="precision", action="store_const", const="half",
                      help="fast mode: fp16 on CUDA, bf16 on CPUs with native bf16, else fp32")


def add_threads_option(p: argparse.ArgumentParser) -> None:
    """``--threads N`` -> ``args.threads`` (None: torch's default); check it with :func:`threads_problem`."""
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's, one per physical core)")


def threads_problem(threads: int | None) -> str | None:
    """The error message for a bad ``--threads`` value, or None."""
    if threads is not None and threads < 1:
        return f"--threads must be >= 1, got {threads}"
    return None
