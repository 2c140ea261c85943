"""What the frozen CPU layers share about oneDNN: whether its fused convolution is there, and the weights reordered
once into its layout per input shape (:class:`PackedWeights`), for :class:`~yolodet.inference.frozen.FrozenConv`,
:class:`~yolodet.inference.winograd.Winograd3x3` and :class:`~yolodet.inference.quantize.QuantConv`.

oneDNN picks a weight layout by problem size: a weight packed for another input size is reordered again on every
call (up to 3x slower), so each layer keeps one packed copy per input shape it has seen, at most
:data:`MAX_SHAPES` (the oldest is dropped: memory stays bounded when the input size keeps changing; yolov3's
packed weights are 248 MB per shape, its Winograd layers' 790 MB).
"""

from __future__ import annotations

from typing import Callable, Hashable

import torch

__all__ = ["MAX_SHAPES", "PackedWeights", "onednn_conv_available"]

MAX_SHAPES = 4


def onednn_conv_available() -> bool:
    """Whether this PyTorch runs oneDNN's fused fp32/bf16 convolution (``mkldnn::_convolution_pointwise``) now
    (``torch.backends.mkldnn.flags(enabled=False)`` turns it off)."""
    return (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and hasattr(torch.ops.mkldnn, "_convolution_pointwise"))


class PackedWeights:
    """Input shape key -> that shape's packed weight, at most ``limit`` keys (the oldest is dropped first)."""

    def __init__(self, limit: int = MAX_SHAPES) -> None:
        self.limit = limit
        self._packed: dict[Hashable, torch.Tensor] = {}

    def get(self, key: Hashable, pack: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The weight packed for ``key``, made by ``pack()`` the first time ``key`` is seen."""
        packed = self._packed.get(key)
        if packed is None:
            if len(self._packed) >= self.limit:
                del self._packed[next(iter(self._packed))]
            packed = self._packed[key] = pack()
        return packed

    def clear(self) -> None:
        """Forget every packed weight (the weights they came from have changed)."""
        self._packed.clear()

    def __len__(self) -> int:
        return len(self._packed)
