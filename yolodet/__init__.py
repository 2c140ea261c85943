"""yolodet: Darknet-faithful YOLO detection in PyTorch.

The main entry points, importable from here (loaded on first use, so ``import yolodet`` stays cheap)::

    from yolodet import Detector, predict, evaluate, train, TrainConfig, load_model, Darknet
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_EXPORTS = {
    "Darknet": "yolodet.modeling.model",
    "load_model": "yolodet.modeling.checkpoint",
    "Detector": "yolodet.inference.detector",
    "predict": "yolodet.inference.predict",
    "DetectionWriter": "yolodet.inference.writers",
    "evaluate": "yolodet.evaluation",
    "train": "yolodet.training",
    "TrainConfig": "yolodet.training",
    "YolodetError": "yolodet.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'yolodet' has no attribute {name!r}")
