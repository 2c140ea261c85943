#!/usr/bin/env python
"""The README's zoo table: every cfg of AlexeyAB's ``cfg/`` folder (``../shared/data/darknet-zoo``) against Darknet C
(``../shared/oracle``), one row per cfg: its layer types, the largest |yolodet - Darknet| / scale of the compared
outputs, and, where Darknet C rejects the cfg, what yolodet does.

    nohup python bench/zoo_darknet.py > zoo.md 2> zoo.log &        # all 95 cfgs: about 20-40 min on 2 cores
    python bench/zoo_darknet.py --only yolov2-tiny.cfg yolov3-tiny.cfg

The comparison is exactly ``tests/test_zoo_darknet.py``'s (its ``run_zoo_cfg``: random weights written by yolodet's
saver, the reduced size, the raw head inputs or a classifier's last layers); the test asserts <= 1e-4, this script
prints the measured value. A cfg that fails prints its first error line instead of a number.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import test_zoo_darknet as zoo  # noqa: E402  (the test's comparison, reused as is)
from conftest import ORACLE  # noqa: E402
from yolodet.cfg import parse_cfg_text  # noqa: E402

IGNORED_TYPES = {"net", "network"}

REJECTED = {name: ("AlexeyAB asserts in `parse_shortcut` (maps of different sizes); yolodet applies pjreddie's "
                   "`shortcut_cpu`, equal to pjreddie's C (`test_blocks.py`)") for name in zoo.PJREDDIE_SHORTCUTS}
REJECTED["efficientnet-lite3.cfg"] = ("Darknet's CPU `activate()` has no relu6 case and outputs 0 (a test shows it); "
                                      "yolodet computes relu6")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", default=None, help="cfg names relative to the zoo folder (default: all)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    return p


def layer_types(cfg: Path) -> str:
    """The cfg's distinct section types, sorted, with ``xnor`` / ``share_index`` flagged on convolutions."""
    blocks = parse_cfg_text(cfg.read_text(errors="replace"), str(cfg))
    types = {b.type.lower() for b in blocks} - IGNORED_TYPES
    text = cfg.read_text(errors="replace")
    for key in ("xnor", "share_index", "dilation", "antialiasing"):
        if f"\n{key}=" in text.replace(" ", ""):
            types.add(key)
    return ", ".join(sorted(types))


def main(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ORACLE))
    import darknet_oracle

    cfgs = [c for c in zoo.ZOO_CFGS if args.only is None or zoo._name(c) in args.only]
    if not cfgs:
        print(f"no cfgs found under {zoo.ZOO}", file=sys.stderr)
        return 2
    print("| cfg | layer types | max diff / scale | where Darknet C rejects it |")
    print("|---|---|---|---|")
    home = os.getcwd()
    for cfg in cfgs:
        name = zoo._name(cfg)
        start = time.perf_counter()
        note, value = REJECTED.get(name, ""), ""
        if not note:
            with tempfile.TemporaryDirectory() as tmp:
                os.chdir(tmp)  # Darknet opens tree=/map= files relative to the cwd
                try:
                    value = f"{zoo.run_zoo_cfg(cfg, darknet_oracle, Path(tmp)):.1e}"
                except Exception as exc:  # report every cfg, whatever fails
                    value = f"error: {str(exc).splitlines()[0][:120]}"
                finally:
                    os.chdir(home)
        print(f"| {name.removesuffix('.cfg')} | {layer_types(cfg)} | {value or '-'} | {note} |", flush=True)
        print(f"{name}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
