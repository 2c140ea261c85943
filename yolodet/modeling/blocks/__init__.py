"""Block families; importing this package registers every built-in block type in ``yolodet.registry.BLOCKS``."""

from yolodet.modeling.blocks import backbone, conv, misc, recurrent, structural, yolo, yolov1, yolov2  # noqa: F401
from yolodet.modeling.blocks.base import Block, BuildContext
from yolodet.modeling.blocks.yolo import HeadSpec

__all__ = ["Block", "BuildContext", "HeadSpec"]
