"""yolodet.inference.winograd: Winograd3x3 (F(4x4, 3x3)) computes F.conv2d(stride 1, padding 1) within fp32
rounding, for any size (not only multiples of the 4x4 tile), batch and memory format; the optimised model uses it
where it pays."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import SHARED, need_shared, randomize
from yolodet.modeling.model import Darknet
from yolodet.inference.optimize import FrozenConv, optimize_for_inference
from yolodet.inference.packed import onednn_conv_available
from yolodet.inference.winograd import Winograd3x3, winograd_pays, winograd_weights


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref).abs().max() / ref.abs().max())


needs_onednn = pytest.mark.skipif(not onednn_conv_available(), reason="this PyTorch has no oneDNN convolution")


@pytest.mark.parametrize(("n", "c", "o", "h", "w"), [(1, 128, 256, 26, 26), (2, 8, 16, 13, 17), (1, 3, 5, 1, 1),
                                                     (1, 16, 4, 4, 8), (3, 32, 32, 19, 6)])
@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@needs_onednn
def test_equals_direct_convolution(n: int, c: int, o: int, h: int, w: int, channels_last: bool, bias: bool) -> None:
    g = torch.Generator().manual_seed(c * o + h)
    x = torch.randn(n, c, h, w, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(o, c, 3, 3, generator=g) * (9 * c) ** -0.5
    b = torch.randn(o, generator=g) if bias else None
    ref = F.conv2d(x.double(), weight.double(), None if b is None else b.double(), padding=1)
    out = Winograd3x3(weight, b)(x)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert _rel_err(out, ref) < 2e-5  # direct fp32: ~1e-6; the transforms add about a decimal digit


@pytest.mark.parametrize(("n", "c", "o", "h", "w"), [(1, 64, 128, 13, 13), (2, 8, 16, 13, 17), (1, 3, 5, 1, 1),
                                                     (3, 32, 24, 19, 6), (1, 16, 8, 16, 16)])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@needs_onednn
def test_a_second_input_size_gets_its_own_packed_weights(n: int, c: int, o: int, h: int, w: int, bias: bool) -> None:
    """Winograd3x3 runs the products as a grouped oneDNN convolution with the bias folded into it, its weights
    packed per tile count: a second input size is the same convolution again."""
    g = torch.Generator().manual_seed(c * o + h)
    weight = torch.randn(o, c, 3, 3, generator=g) * (9 * c) ** -0.5
    b = torch.randn(o, generator=g) if bias else None
    conv = Winograd3x3(weight, b)
    for size in ((h, w), (h + 5, w + 2)):
        x = torch.randn(n, c, *size, generator=g).contiguous(memory_format=torch.channels_last)
        ref = F.conv2d(x.double(), weight.double(), None if b is None else b.double(), padding=1)
        out = conv(x)
        assert out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
        assert _rel_err(out, ref) < 2e-5
    assert len(conv._packed) == 2  # one reordered weight per tile count


@needs_onednn
def test_transformed_weights_of_a_delta_kernel_are_the_identity_map() -> None:
    """A kernel with a single 1 at its centre copies its input: the transforms are exact inverses of each other."""
    weight = torch.zeros(1, 1, 3, 3)
    weight[0, 0, 1, 1] = 1.0
    x = torch.arange(1.0, 1 + 9 * 11).reshape(1, 1, 9, 11)
    torch.testing.assert_close(Winograd3x3(weight, None)(x), x, rtol=0, atol=1e-4)


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="3x3"):
        winograd_weights(torch.zeros(4, 2, 5, 5))
    with pytest.raises(ValueError, match="3x3"):
        Winograd3x3(torch.zeros(4, 2, 5, 5), None)
    with pytest.raises(ValueError, match="8 channels"):
        Winograd3x3(torch.zeros(4, 2, 3, 3), None)(torch.zeros(1, 8, 6, 6))


def test_pays_for_wide_mid_resolution_layers_only() -> None:
    assert winograd_pays(128, 256, 52, 52) and winograd_pays(256, 512, 26, 26)  # yolov3's residual 3x3s at 416
    assert winograd_pays(512, 1024, 13, 13) and winograd_pays(64, 64, 104, 104)
    assert not winograd_pays(512, 1024, 7, 7)  # 4 tiles: the 36 products are too thin
    assert not winograd_pays(128, 128, 13, 13)  # too little work for the extra passes
    assert not winograd_pays(16, 32, 208, 208) and not winograd_pays(32, 64, 104, 104)  # few channels
    assert not winograd_pays(64, 64, 208, 208)  # large maps: the tiles leave the caches


def test_frozen_conv_uses_it_in_fp32_on_cpu_only_where_it_pays() -> None:
    model = randomize(Darknet.from_cfg_text(
        "[net]\nwidth=32\nheight=32\nchannels=128\n"
        "[convolutional]\nbatch_normalize=1\nfilters=128\nsize=3\nstride=1\npad=1\nactivation=leaky\n"
        "[convolutional]\nbatch_normalize=1\nfilters=128\nsize=3\nstride=2\npad=1\nactivation=mish\n"), seed=3).eval()
    x = torch.randn(2, 128, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)
    fast = optimize_for_inference(model)
    out = fast(x)
    first, second = (layer for layer in fast.net.layers if isinstance(layer, FrozenConv))
    assert isinstance(first._winograd, Winograd3x3)  # 3x3, stride 1, 128 -> 128 at 32x32
    assert second._winograd is None  # stride 2
    assert max(_rel_err(o, r) for o, r in zip(out, ref)) < 1e-5
    with torch.no_grad():
        assert not first._use_winograd(x.bfloat16())  # reduced precision keeps the direct convolution
        with torch.backends.mkldnn.flags(enabled=False):
            assert not first._use_winograd(x)  # the products need oneDNN
    off = optimize_for_inference(model, winograd=False)
    torch.testing.assert_close(off(x), out, rtol=1e-5, atol=1e-5)
    assert all(layer._winograd is None for layer in off.net.layers if isinstance(layer, FrozenConv))


def test_yolov3_tiny_at_416_uses_it_and_stays_exact() -> None:
    """The input size where the bench runs: the 26x26 layers go through Winograd, outputs stay within 1e-4."""
    cfg = need_shared(SHARED / "data" / "darknet-cfg" / "yolov3-tiny.cfg")
    model = randomize(Darknet.from_cfg(cfg), seed=4).eval()
    x = torch.rand(1, 3, 416, 416, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)
    fast = optimize_for_inference(model)
    out = fast(x)
    used = [i for i, layer in enumerate(fast.net.layers) if isinstance(layer, FrozenConv) and layer._winograd]
    assert used == [6, 8, 10, 12, 14, 21]
    assert max(_rel_err(o, r) for o, r in zip(out, ref)) < 1e-4
