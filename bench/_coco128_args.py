"""Command-line arguments shared by the COCO128 benchmark scripts: the model and annotations they default to
(yolov3-tiny with the official weights, from the reference data in ``../shared``)."""

from __future__ import annotations

import argparse
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"


def add_coco128_args(p: argparse.ArgumentParser) -> None:
    """Add ``--cfg``, ``--weights`` and ``--annotations`` (COCO json) to ``p``."""
    p.add_argument("--cfg", default=str(SHARED / "data" / "darknet-cfg" / "yolov3-tiny.cfg"), help="Darknet cfg")
    p.add_argument("--weights", default=str(SHARED / "weights" / "yolov3-tiny.weights"), help="Darknet weights")
    p.add_argument("--annotations", default=str(SHARED / "data" / "coco128" / "annotations" / "instances.json"),
                   help="COCO json; its images are evaluated")
