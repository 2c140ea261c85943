"""What every block shares: the :class:`Block` module interface and the :class:`BuildContext` builders read."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from yolodet.cfg import CfgBlock
from yolodet.cfg.net import NetConfig

MAX_ANCHORS = 1 << 12
"""Most anchors (``num=``) a head may declare: real cfgs use 3-9 (yolo9000: 9); a typo such as ``num=1000000000``
must be an error, not a billion-element list."""

Shape = tuple[int, int, int]
"""(channels, height, width) of one layer's output at the cfg's network size."""


class Block(nn.Module):
    """One Darknet layer.

    Attributes:
        out_shape: (C, H, W) produced at the cfg's network size, known at build time.
        sources: absolute indices of earlier layers this block reads besides its input (route, shortcut ...).
    """

    out_shape: Shape
    sources: tuple[int, ...] = ()

    def forward(self, x: torch.Tensor, refs: list[torch.Tensor]) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def darknet_tensors(self) -> list[torch.Tensor]:
        """Tensors stored in a Darknet ``.weights`` file for this layer, in file order (empty: none)."""
        return []


class HeadBlock(Block):
    """A detection head (``[yolo]``, ``[region]``, ``[Gaussian_yolo]``, ``[detection]``): the identity in the model
    (its input is the raw head output the model returns); ``spec`` (a frozen dataclass with a ``kind``) is what
    decode and the loss read."""

    spec: object

    def __init__(self, spec: object, out_shape: Shape) -> None:
        super().__init__()
        self.spec, self.out_shape = spec, out_shape

    def forward(self, x: torch.Tensor, refs: list[torch.Tensor]) -> torch.Tensor:
        return x


@dataclass
class BuildContext:
    """What a builder may know about the network built so far.

    Attributes:
        net: the typed ``[net]`` section (input size, training keys).
        shapes: output (C, H, W) of every earlier layer, index = Darknet layer index.
        layers: the earlier blocks themselves (backbone stages share one torchvision model through this).
    """

    net: NetConfig
    shapes: list[Shape] = field(default_factory=list)
    layers: list[Block] = field(default_factory=list)

    @property
    def index(self) -> int:
        """Index of the layer being built."""
        return len(self.shapes)

    @property
    def in_shape(self) -> Shape:
        """Output shape of the previous layer (or of the network input for layer 0)."""
        if self.shapes:
            return self.shapes[-1]
        return self.net.input_shape

    def resolve(self, block: CfgBlock, key: str, index: int) -> int:
        """Darknet index (negative = relative to this layer) -> absolute index of an earlier layer."""
        absolute = self.index + index if index < 0 else index
        if not 0 <= absolute < self.index:
            raise block.error(f"layer index {index} resolves to {absolute}, outside the earlier layers "
                              f"0..{self.index - 1}", key)
        return absolute
