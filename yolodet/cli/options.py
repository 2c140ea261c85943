"""Command-line options the subcommands share, each with one spelling, one default, one help text and one check.

The checks themselves live in the library (:func:`yolodet.inference.settings.parse_size`,
:func:`~yolodet.inference.settings.check_thresholds`, :func:`yolodet.device.resolve_device`), so a Python user
gets the same messages; this module only parses and resolves paths.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from yolodet.errors import YolodetError

log = logging.getLogger(__name__)

__all__ = [
    "OptionError", "add_device_option", "add_img_size_option", "add_model_options", "add_precision_options",
    "add_threads_option", "add_threshold_options", "apply_threads", "check_output_dir", "img_size", "model_files",
    "threads_problem",
]

PRECISIONS = ("fp32", "bf16", "fp16", "int8", "half")  # the values yolodet.inference.optimize.resolve_precision takes


class OptionError(YolodetError, ValueError):
    """A command-line value that cannot be used (the message names the option)."""


def add_model_options(p: argparse.ArgumentParser, *, cfg_required: bool = False) -> None:
    """``--cfg`` (a path or a shipped cfg's name) and ``--weights`` (Darknet ``.weights`` or a checkpoint)."""
    p.add_argument("--cfg", required=cfg_required,
                   help="Darknet cfg: a path, or the name of a shipped cfg (e.g. yolo-v3-tiny)" +
                        ("" if cfg_required else "; optional with a yolodet checkpoint --weights, which embeds its "
                         "cfg"))
    p.add_argument("--weights", help="Darknet .weights or yolodet checkpoint (.pt) (default: <cfg stem>.weights in "
                                     "the checkout's weights/ or the user cache, fetched and md5-verified when it "
                                     "is a known official file)")


def add_inference_input_options(p: argparse.ArgumentParser) -> None:
    """``--allow-partial``, ``--max-image-pixels`` and ``--backend`` of detect and val."""
    from yolodet.data.images import DEFAULT_MAX_PIXELS
    from yolodet.inference.detector import BACKENDS

    p.add_argument("--allow-partial", action="store_true",
                   help="run weights that fill only some layers (the others stay random: garbage detections)")
    p.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse larger images from their header (decompression bombs; default: {DEFAULT_MAX_PIXELS},"
                        f" 0 = no limit)")
    p.add_argument("--backend", choices=BACKENDS, default="torch",
                   help="run the network in torch (default) or ONNX Runtime (pip install yolodet[onnx]); same "
                        "preprocessing, decode and NMS")


def max_pixels(value: int) -> int | None:
    """``--max-image-pixels``: 0 means no limit; a negative value is an error."""
    if value < 0:
        raise OptionError(f"--max-image-pixels must be >= 0 (0: no limit), got {value}")
    return value or None


def add_img_size_option(p: argparse.ArgumentParser, flag: str = "--img-size", what: str = "network input") -> None:
    p.add_argument(flag, type=int, nargs="+", metavar="S",
                   help=f"{what}: S (S x S) or W H, a multiple of the largest head stride (default: the cfg's)")


def img_size(value: list[int] | None) -> int | tuple[int, ...] | None:
    """The parsed ``--img-size`` list as the library takes it (checked there: one or two values)."""
    if value is None:
        return None
    return value[0] if len(value) == 1 else tuple(value)


def add_threshold_options(p: argparse.ArgumentParser, conf: float, nms: float, conf_help: str) -> None:
    p.add_argument("--conf-thres", type=float, default=conf, help=f"{conf_help} (default: {conf:g}); in [0, 1)")
    p.add_argument("--nms-thres", type=float, default=nms,
                   help=f"per-class NMS IoU threshold (default: {nms:g}); in (0, 1]")


def add_device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto",
                   help="auto (default: the first CUDA GPU when there is one, else the CPU), cpu, cuda, cuda:N or N")


def add_precision_options(p: argparse.ArgumentParser) -> None:
    """``--precision fp32|bf16|fp16|int8`` or ``--half`` (the device's fast mode) -> ``args.precision``;
    ``--calibrate DIR`` -> ``args.calibrate`` (int8's calibration images)."""
    prec = p.add_mutually_exclusive_group()
    prec.add_argument("--precision", choices=PRECISIONS[:4], default="fp32",
                      help="network precision: fp32 (default), bf16 (fast on CPUs with native bf16), fp16 (CUDA), "
                           "int8 (CPU; calibrated, see --calibrate); decoding and NMS stay fp32")
    prec.add_argument("--half", dest="precision", action="store_const", const="half",
                      help="fast mode: fp16 on CUDA, bf16 on CPUs with native bf16, else int8 (the logged line "
                           "says which)")
    p.add_argument("--calibrate", metavar="DIR",
                   help="int8: calibrate on this folder of images (default: the calibration stored in an int8 "
                        "--weights file from 'yolodet quantize', else the bundled sample image, with a warning)")


def add_threads_option(p: argparse.ArgumentParser) -> None:
    """``--threads N`` -> ``args.threads`` (None: torch's default); applied by :func:`apply_threads`."""
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's, one per physical core)")


def threads_problem(threads: int | None) -> str | None:
    """The error message for a bad ``--threads`` value, or None."""
    if threads is not None and threads < 1:
        return f"--threads must be >= 1, got {threads}"
    return None


def apply_threads(threads: int | None) -> None:
    """Check and apply ``--threads`` (torch's thread count is process-wide: a CLI decision, not the library's)."""
    problem = threads_problem(threads)
    if problem:
        raise OptionError(problem)
    from yolodet.inference.settings import check_workers

    check_workers(threads, "--threads")
    if threads:
        import torch

        torch.set_num_threads(threads)


def check_output_dir(path: str | Path, flag: str = "--output") -> Path:
    """An output folder that exists as a file (or cannot be a folder) is an error before any work is done."""
    out = Path(path)
    for parent in (out, *out.parents):
        if parent.exists():
            if not parent.is_dir():
                raise OptionError(f"{flag} {path}: {parent} exists and is not a folder")
            break
    return out


def model_files(cfg: str | None, weights: str | None, *, fetch: bool = True) -> tuple[Path | None, Path]:
    """``--cfg`` / ``--weights`` -> (cfg path or None, weights path), the one rule every subcommand follows:

    - a checkpoint ``--weights`` brings its own cfg, so ``--cfg`` may be left out (the shipped default cfg is
      used only when ``--weights`` is not a checkpoint);
    - ``--cfg`` is a path or a shipped cfg's name;
    - no ``--weights``: ``<cfg stem>.weights`` in the checkout's ``weights/`` or the user cache, fetched and
      md5-verified when it is a known official file (see :mod:`yolodet.cli.fetch`).
    """
    from yolodet.cfg.shipped import DEFAULT_CFG, resolve_cfg
    from yolodet.cli.fetch import default_weights_path, ensure_weights
    from yolodet.modeling.checkpoint import is_checkpoint

    if weights is not None and not Path(weights).exists():
        raise OptionError(f"--weights {weights}: no such file")
    if cfg is None and weights is not None and is_checkpoint(weights):
        return None, Path(weights)
    try:
        cfg_path = resolve_cfg(cfg) if cfg is not None else DEFAULT_CFG
    except FileNotFoundError as exc:
        raise OptionError(f"--cfg {exc}") from None
    if weights is not None:
        return cfg_path, Path(weights)
    target = default_weights_path(cfg_path)
    return cfg_path, ensure_weights(target) if fetch or not target.exists() else target
