"""yolodet.inference.packed: each frozen layer keeps one packed weight per input shape, at most MAX_SHAPES, the
oldest dropped first, and packs a shape only the first time it sees it."""

from __future__ import annotations

import torch

from conftest import randomize
from yolodet.inference.optimize import FrozenConv, optimize_for_inference
from yolodet.inference.packed import MAX_SHAPES, PackedWeights, onednn_conv_available
from yolodet.modeling.model import Darknet


def test_bounded_oldest_first_and_packed_once() -> None:
    cache = PackedWeights(limit=2)
    made: list[str] = []

    def pack(key: str):
        return lambda: made.append(key) or torch.tensor(len(made))

    a = cache.get("a", pack("a"))
    assert cache.get("a", pack("a")) is a and made == ["a"]  # a second call reuses the packed weight
    cache.get("b", pack("b"))
    cache.get("c", pack("c"))  # the limit: "a" goes
    assert len(cache) == 2 and made == ["a", "b", "c"]
    cache.get("b", pack("b"))
    cache.get("a", pack("a"))  # packed again
    assert made == ["a", "b", "c", "a"]
    cache.clear()
    assert len(cache) == 0


def test_frozen_conv_keeps_at_most_max_shapes_across_input_sizes() -> None:
    model = randomize(Darknet.from_cfg_text(
        "[net]\nwidth=32\nheight=32\nchannels=3\n"
        "[convolutional]\nbatch_normalize=1\nfilters=8\nsize=3\nstride=1\npad=1\nactivation=leaky\n"), seed=1).eval()
    fast = optimize_for_inference(model)
    conv = next(layer for layer in fast.net.layers if isinstance(layer, FrozenConv))
    for size in range(8, 8 + 4 * (MAX_SHAPES + 2), 4):
        x = torch.rand(1, 3, size, size)
        with torch.no_grad():
            torch.testing.assert_close(fast(x)[0], model(x)[0], rtol=1e-5, atol=1e-5)
    assert len(conv._packed) == (MAX_SHAPES if onednn_conv_available() else 0)
    fast.to(torch.float32)  # .to() makes every packed weight stale
    assert len(conv._packed) == 0
