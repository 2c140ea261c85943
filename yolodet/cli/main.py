"""The ``yolodet`` command (also ``python -m yolodet``): the subcommand table and the one error boundary.

Each subcommand is a module of :mod:`yolodet.cli` with ``HELP`` (its line in ``yolodet --help``),
``add_arguments(parser)`` and ``run(args) -> exit code``; it is imported only when used, after the OpenMP
defaults are set (:mod:`yolodet.cli.openmp`: they must precede ``import torch``).

Errors: a :class:`~yolodet.errors.YolodetError` (bad cfg, weights, dataset, image, argument ...) is logged as
one line (``ERROR ...`` on stderr) with exit code 2; Ctrl-C exits 130; an OS error on a file the user named is one line
too; any other exception is a bug: one line saying so and to re-run with ``--debug``, which shows the traceback.
The library never does this: Python callers get the exceptions themselves.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from yolodet.cli.openmp import set_openmp_defaults

__all__ = ["SUBCOMMANDS", "build_parser", "main", "run_subcommand", "subcommand_parser"]

SUBCOMMANDS: dict[str, str] = {
    "detect": "yolodet.cli.detect",
    "val": "yolodet.cli.val",
    "train": "yolodet.cli.train",
    "info": "yolodet.cli.info",
    "anchors": "yolodet.cli.anchors",
    "make-cfg": "yolodet.cli.make_cfg",
    "export": "yolodet.cli.export",
    "quantize": "yolodet.cli.quantize",
    "partial": "yolodet.cli.partial",
}
"""Subcommand name -> module (``HELP``, ``add_arguments``, ``run``)."""

EXIT_ERROR, EXIT_INTERRUPTED = 2, 130

log = logging.getLogger("yolodet")


def _module(name: str):
    set_openmp_defaults()  # idle OpenMP threads spin briefly, then sleep; must precede `import torch`
    return importlib.import_module(SUBCOMMANDS[name])


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("output")
    group.add_argument("--quiet", action="store_true", help="warnings, errors and the summary only")
    group.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    group.add_argument("--debug", action="store_true", help="show the full traceback of an unexpected error")
    group.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return common


def _add(sub: argparse._SubParsersAction, name: str, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    module = _module(name)
    p = sub.add_parser(name, help=module.HELP, description=(module.__doc__ or module.HELP).strip(),
                       parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(p)
    p.set_defaults(_subcommand=name)
    return p


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("yolodet")
    except PackageNotFoundError:  # pragma: no cover - running from an uninstalled checkout
        return "(not installed)"


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``yolodet`` parser; ``only``: register just that subcommand (faster: imports one module)."""
    parser = argparse.ArgumentParser(
        prog="yolodet", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Darknet .cfg + .weights in PyTorch, exactly: detection, COCO evaluation, training.",
        epilog="Run `yolodet SUBCOMMAND --help` for a subcommand's options and exit codes.")
    parser.add_argument("--version", action="version", version=f"yolodet {_version()}")
    sub = parser.add_subparsers(title="subcommands", metavar="SUBCOMMAND")
    common = _common()
    for name in SUBCOMMANDS:
        if only is None or name == only:
            _add(sub, name, common)
    return parser


def subcommand_parser(name: str) -> argparse.ArgumentParser:
    """The parser of one subcommand, as ``tools/<name>.py`` presents it (``prog`` is the script)."""
    common = _common()
    module = _module(name)
    p = argparse.ArgumentParser(description=(module.__doc__ or module.HELP).strip(), parents=[common],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(p)
    p.set_defaults(_subcommand=name)
    return p


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose or args.debug else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(format="%(levelname)s %(message)s", stream=sys.stderr)  # no-op if logging is set up
    logging.getLogger().setLevel(level)


def _leave_process_group() -> None:
    """Under torchrun: wait for every rank, then close the process group, so that no rank exits while another
    still talks to it (an open group at interpreter exit can abort the process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        except Exception:  # noqa: BLE001 - another rank died: the run has already failed and said so
            pass
        dist.destroy_process_group()


def run_subcommand(name: str, args: argparse.Namespace) -> int:
    """Run a parsed subcommand inside the error boundary (see the module docstring); returns the exit code."""
    try:
        return _run_subcommand(name, args)
    finally:
        if "torch" in sys.modules:
            _leave_process_group()


def _run_subcommand(name: str, args: argparse.Namespace) -> int:
    from yolodet.errors import YolodetError

    _setup_logging(args)
    try:
        return _module(name).run(args)
    except YolodetError as exc:
        log.debug("details", exc_info=True)
        log.error("%s", exc)
        return EXIT_ERROR
    except KeyboardInterrupt:
        log.error("interrupted")
        return EXIT_INTERRUPTED
    except OSError as exc:
        if args.debug:
            raise
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        log.error("%s%s", where, exc.strerror or exc)
        return EXIT_ERROR
    except Exception as exc:  # a bug: say so briefly, unless --debug asks for the traceback
        if args.debug:
            raise
        log.error("unexpected %s in yolodet %s: %s\nThis is a bug in yolodet, not in your input; re-run with "
                  "--debug for the traceback and report it.", type(exc).__name__, name, exc)
        return EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    """``yolodet [SUBCOMMAND] [options]``; returns the exit code (the console script exits with it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    wanted = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(wanted if wanted in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    if not hasattr(args, "_subcommand"):
        parser.print_help()
        return EXIT_ERROR
    return run_subcommand(args._subcommand, args)
