"""Block families; importing this package registers every built-in block type in ``yolodet.registry.BLOCKS``."""

from yolodet.modeling.blocks import (antialias, backbone, conv, conv_lstm, misc, normalization,  # noqa: F401
                                     recurrent, structural, yolo, yolov1, yolov2)
from yolodet.modeling.blocks.base import Block, BuildContext
from yolodet.modeling.blocks.yolo import HeadSpec

__all__ = ["Block", "BuildContext", "HeadSpec"]
