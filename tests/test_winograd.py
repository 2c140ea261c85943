"""yolodet.inference.winograd: Winograd3x3 (F(4x4, 3x3)) computes F.conv2d(stride 1, padding 1) within fp32
rounding, for any size (not only multiples of the 4x4 tile), batch and memory format, with the transforms in
yolodet's AVX2 kernels (``yolodet._fp32_avx2``) and in PyTorch; the optimised model uses it where it pays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import SHARED, need_shared, randomize
from yolodet.modeling.model import Darknet
from yolodet.inference.optimize import FrozenConv, optimize_for_inference
from yolodet.inference.packed import onednn_conv_available
from yolodet.inference import winograd
from yolodet.inference.winograd import Winograd3x3, transform_kernels, winograd_pays, winograd_weights


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref).abs().max() / ref.abs().max())


needs_onednn = pytest.mark.skipif(not onednn_conv_available(), reason="this PyTorch has no oneDNN convolution")


@pytest.fixture(params=["avx2", "torch"])
def transforms(request, monkeypatch) -> str:
    """Run the test with the AVX2 transforms (skipped where they are not built or the CPU lacks AVX2) and with
    PyTorch's."""
    if request.param == "avx2" and transform_kernels() is None:
        pytest.skip("yolodet._fp32_avx2 is not built here, or this CPU has no AVX2/FMA")
    if request.param == "torch":
        monkeypatch.setattr(winograd, "transform_kernels", lambda: None)
    return request.param


@pytest.mark.parametrize(("n", "c", "o", "h", "w"), [(1, 128, 256, 26, 26), (2, 8, 16, 13, 17), (1, 3, 5, 1, 1),
                                                     (1, 16, 4, 4, 8), (3, 32, 32, 19, 6), (2, 20, 13, 9, 5)])
@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@needs_onednn
def test_equals_direct_convolution(n: int, c: int, o: int, h: int, w: int, channels_last: bool, bias: bool,
                                   transforms: str) -> None:
    """Sizes that are not multiples of the tile (4) nor of the kernels' 8 channels per register (20 -> 13: both
    the vector loop and the scalar tail), batches whose tiles run in one call."""
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
def test_a_second_input_size_gets_its_own_packed_weights(n: int, c: int, o: int, h: int, w: int, bias: bool,
                                                         transforms: str) -> None:
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


@pytest.mark.parametrize("slope", [0.1, 0.0, 1.0, None], ids=["leaky", "relu", "slope1", "none"])
@needs_onednn
def test_activation_in_the_output_transform(slope: float | None, transforms: str) -> None:
    """``slope``: max(y, slope * y) on the output (leaky; 0 is relu, 1 and None leave it linear)."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 24, 11, 14, generator=g).contiguous(memory_format=torch.channels_last)
    weight, b = torch.randn(40, 24, 3, 3, generator=g) * 0.07, torch.randn(40, generator=g)
    ref = F.conv2d(x.double(), weight.double(), b.double(), padding=1)
    if slope is not None:
        ref = torch.maximum(ref, slope * ref)
    out = Winograd3x3(weight, b)(x, slope)
    assert _rel_err(out, ref) < 2e-5
    assert (out < 0).any() == (slope != 0.0)  # relu leaves no negative output, the others do


@needs_onednn
def test_transformed_weights_of_a_delta_kernel_are_the_identity_map(transforms: str) -> None:
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


@pytest.mark.parametrize("fast", [True, False], ids=["avx2-transforms", "torch-transforms"])
def test_pays_for_wide_mid_resolution_layers_only(fast: bool) -> None:
    def pays(*shape: int) -> bool:
        return winograd_pays(*shape, fast_transforms=fast)

    assert pays(128, 256, 52, 52) and pays(256, 512, 26, 26)  # yolov3's residual 3x3s at 416
    assert pays(512, 1024, 13, 13) and pays(64, 64, 104, 104)
    assert not pays(512, 1024, 7, 7)  # 4 tiles: the 36 products are too thin
    assert not pays(128, 128, 13, 13) and not pays(32, 32, 52, 52)  # too little work for the extra passes
    assert not pays(16, 32, 208, 208) and not pays(16, 16, 208, 208)  # 16 channels: slow grouped products
    assert not pays(32, 64, 208, 208)  # few channels on a large map: a tie at best
    # Thinner layers and larger maps pay only when the transforms are one cheap pass each.
    assert pays(32, 64, 104, 104) == pays(24, 24, 104, 104) == pays(64, 64, 208, 208) == fast
    assert winograd_pays(32, 64, 104, 104) == (transform_kernels() is not None)  # the default: what runs here


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


def test_yolov3_tiny_at_416_uses_it_and_stays_exact(transforms: str) -> None:
    """The input size where the bench runs: the 104x104 (AVX2 transforms only) to 13x13 layers go through
    Winograd, outputs stay within 1e-4."""
    cfg = need_shared(SHARED / "data" / "darknet-cfg" / "yolov3-tiny.cfg")
    model = randomize(Darknet.from_cfg(cfg), seed=4).eval()
    x = torch.rand(1, 3, 416, 416, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)
    fast = optimize_for_inference(model)
    out = fast(x)
    used = [i for i, layer in enumerate(fast.net.layers) if isinstance(layer, FrozenConv) and layer._winograd]
    assert used == ([4] if transforms == "avx2" else []) + [6, 8, 10, 12, 14, 21]
    assert max(_rel_err(o, r) for o, r in zip(out, ref)) < 1e-4


def test_the_kernels_check_their_buffers() -> None:
    kernels = transform_kernels()
    if kernels is None:
        pytest.skip("yolodet._fp32_avx2 is not built here, or this CPU has no AVX2/FMA")
    x, v = np.zeros((1, 5, 5, 8), np.float32), np.zeros((4, 36, 8), np.float32)
    kernels.winograd_input(x, v, 1, 5, 5, 8, 1)  # 2 x 2 tiles: the right sizes
    with pytest.raises(ValueError, match="v: expected a C-contiguous buffer of 4608 bytes"):
        kernels.winograd_input(x, v[:3], 1, 5, 5, 8, 1)
    with pytest.raises(ValueError, match="positive"):
        kernels.winograd_output(v, x, 1, 5, 5, 8, 0.1, 0)
    with pytest.raises(ValueError, match="y: expected"):
        kernels.winograd_output(v, x[:, :4], 1, 5, 5, 8, 0.1, 1)
