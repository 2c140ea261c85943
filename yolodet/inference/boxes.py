"""Pure box-format conversions (torch). Function names say the formats.

Formats: ``xyxy`` = (x1, y1, x2, y2) corners; ``cxcywh`` = (centre x, centre y, width, height), Darknet's
and YOLO's native format; ``xywh`` = (x1, y1, width, height), COCO's results format. Every function takes
``Tensor[..., 4]`` (any leading dims, any device/dtype) and returns a new tensor of the same shape.
"""

from __future__ import annotations

import torch
from torchvision.ops import box_convert, clip_boxes_to_image


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """``Tensor[..., 4]`` (cx, cy, w, h) -> ``Tensor[..., 4]`` (x1, y1, x2, y2)."""
    return box_convert(_checked(boxes), in_fmt="cxcywh", out_fmt="xyxy")


def xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """``Tensor[..., 4]`` (x1, y1, x2, y2) -> ``Tensor[..., 4]`` (cx, cy, w, h)."""
    return box_convert(_checked(boxes), in_fmt="xyxy", out_fmt="cxcywh")


def xyxy_to_xywh(boxes: torch.Tensor) -> torch.Tensor:
    """``Tensor[..., 4]`` (x1, y1, x2, y2) -> ``Tensor[..., 4]`` COCO (x, y, w, h), (x, y) top-left."""
    return box_convert(_checked(boxes), in_fmt="xyxy", out_fmt="xywh")


def clip_xyxy(boxes: torch.Tensor, width: float, height: float) -> torch.Tensor:
    """Clip ``Tensor[..., 4]`` xyxy boxes to ``[0, width] x [0, height]`` (image edges, in pixels)."""
    return clip_boxes_to_image(_checked(boxes), (height, width))


def _checked(boxes: torch.Tensor) -> torch.Tensor:
    if boxes.shape[-1:] != (4,):
        raise ValueError(f"boxes must have shape [..., 4], got {tuple(boxes.shape)}")
    return boxes
