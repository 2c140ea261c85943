"""Block families; importing this package registers every built-in block type in ``yolodet.registry.BLOCKS``."""

from yolodet.blocks import backbone, conv, structural, yolo  # noqa: F401
from yolodet.blocks.base import Block, BuildContext
from yolodet.blocks.yolo import HeadSpec

__all__ = ["Block", "BuildContext", "HeadSpec"]
