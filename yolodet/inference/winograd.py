"""3x3 stride-1 convolutions by Winograd's minimal filtering F(4x4, 3x3), for the fp32 CPU inference path.

A direct 3x3 convolution spends 9 multiply-adds per output value and input channel; F(4x4, 3x3) computes a 4x4
output tile from a 6x6 input tile with 36, i.e. 2.25 per output (Lavin & Gray, "Fast Algorithms for Convolutional
Neural Networks", 2016; the interpolation points 0, 1, -1, 2, -2 and infinity). The work becomes three matrix
products:

1. input transform ``V = B^T d B`` of every overlapping 6x6 tile ``d``,
2. 36 independent ``[tiles, C] @ [C, O]`` products with the transformed weights ``U = G g G^T`` (oneDNN; the bias
   rides along),
3. output transform ``Y = A^T M A``, then the activation.

Why: on a 2-core AVX-512 EPYC, oneDNN's direct fp32 convolution already runs at the cores' peak, so only fewer
multiplications make it faster. OpenCV DNN does the same for its 3x3 convolutions. The 36 products are one
*grouped 1x1 oneDNN convolution* (36 groups; the tiles are its pixels, in the NHWC memory the input transform
writes): oneDNN's convolution kernels reach ~120 GMAC/s there, where the BLAS's batched product (MKL, on AMD)
reaches 45-100.

The transforms run in yolodet's AVX2 kernels (:func:`transform_kernels`, ``yolodet/_fp32/winograd_f32.c``): one
pass each, NHWC input -> [T, 36, C] tiles and [T, 36, O] products -> NHWC output with leaky or relu applied, split
over the threads. In PyTorch (where the extension is not built, or ``YOLODET_WINOGRAD_TRANSFORMS=torch``) they are
a padding copy, a tile gather, a [36, 36] and a [16, 36] batched matrix product, a crop and an activation pass:
2.1 of yolov3-tiny's 22 ms went to the two products alone. Measured on one layer at batch 1 (warm, ms, direct
oneDNN with fused leaky -> Winograd with the AVX2 transforms): 512->1024 @13 6.89 -> 4.19, 256->512 @13 1.63 ->
1.06, 128->256 @52 7.13 -> 2.84, 64->128 @52 1.76 -> 0.86, 32->64 @104 1.91 -> 1.24, 64->64 @208 14.2 -> 9.1;
but 32->32 @52 0.25 -> 0.30 (too little work), 512->1024 @7 1.80 -> 2.14 (4 tiles), 32->64 @208 7.75 -> 7.72
and 16->32 @208 1.96 -> 4.53 (16 channels: the grouped products are slow). :func:`winograd_pays` encodes where it
wins, for either kind of transform. Whole networks at 416, batch 1: yolov3-tiny 22.4 -> 19.4 ms, yolov3 218 ->
190 ms, yolov4 254 -> 233 ms (PyTorch's transforms -> the AVX2 ones).

Accuracy: the transforms add rounding; one layer's outputs stay within ~2e-5 relative of the exact convolution
(direct: ~1e-6; 512 -> 1024 channels: 1.4e-5), well inside the 1e-4 that the optimised model promises. fp32 only:
the transforms amplify rounding (entries up to 5 and 8), which bf16's 8 significant bits cannot spare; reduced
precisions keep the direct convolution.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

from yolodet.inference.cpu_features import avx2_extension
from yolodet.inference.packed import PackedWeights

__all__ = ["TILE", "Winograd3x3", "transform_kernels", "winograd_pays", "winograd_weights"]

TILE = 4  # output tile side m of F(m x m, 3 x 3); input tiles are m + 2 = 6 wide

# F(4, 3) with the points 0, 1, -1, 2, -2, inf (exact in binary except G's 1/6, 1/12 and 1/24).
_BT = ((4, 0, -5, 0, 1, 0),
       (0, -4, -4, 1, 1, 0),
       (0, 4, -4, -1, 1, 0),
       (0, -2, -1, 2, 1, 0),
       (0, 2, -1, -2, 1, 0),
       (0, 4, 0, -5, 0, 1))
_G = ((1 / 4, 0, 0),
      (-1 / 6, -1 / 6, -1 / 6),
      (-1 / 6, 1 / 6, -1 / 6),
      (1 / 24, 1 / 12, 1 / 6),
      (1 / 24, -1 / 12, 1 / 6),
      (0, 0, 1))
_AT = ((1, 1, 1, 1, 1, 0),
       (0, 1, -1, 2, -2, 0),
       (0, 1, 1, 4, 4, 0),
       (0, 1, -1, 8, -8, 1))


def winograd_pays(in_channels: int, out_channels: int, height: int, width: int,
                  fast_transforms: bool | None = None) -> bool:
    """Whether :class:`Winograd3x3` beats oneDNN's direct convolution for this layer at batch 1 (fp32, CPU;
    measured on a 2-core AVX-512 EPYC, see the module docstring). ``fast_transforms``: whether the AVX2 transforms
    run (default: :func:`transform_kernels` is there). With them:

    - at least 24 input and output channels (16: the products' grouped convolution is slow, 2.3-2.8x the direct
      time);
    - at least 4M multiply-adds per tap (``C * O * H * W``; 32 -> 32 at 52x52 is 1.2x slower);
    - a map of at least 10x10 (9 tiles; a 7x7 map is only 4: the products are too thin);
    - fewer than 64 channels only on maps of at most 128x128 pixels (32 -> 64 at 208x208 is a tie; 64 -> 64 at
      208x208 is 0.64x the direct time).

    With PyTorch's transforms: at least 64 channels and at most 128x128 pixels (the transforms' extra passes cost
    more on thinner layers and larger maps: 64 -> 64 at 208x208 is 1.06x slower)."""
    if fast_transforms is None:
        fast_transforms = transform_kernels() is not None
    small = min(in_channels, out_channels)
    if not fast_transforms and (small < 64 or height * width > 128 * 128):
        return False
    return (small >= 24 and in_channels * out_channels * height * width >= 4_000_000 and min(height, width) >= 10
            and (small >= 64 or height * width <= 128 * 128))


def winograd_weights(weight: torch.Tensor) -> torch.Tensor:
    """[O, C, 3, 3] conv weights -> [36, C, O] transformed weights ``G g G^T``, in ``weight``'s dtype and device.

    One product with ``G (x) G`` ([36, 9]) over the [9, C * O] kernel taps: ~1e-8 relative rounding, and fast
    enough for the first forward (yolov3's 22 such layers at 416: 0.09 s on 2 cores)."""
    if weight.shape[-2:] != (3, 3):
        raise ValueError(f"Winograd F(4x4, 3x3) needs 3x3 kernels, got {tuple(weight.shape)}")
    o, c = weight.shape[:2]
    g = torch.tensor(_G, dtype=weight.dtype, device=weight.device)
    taps = weight.permute(2, 3, 1, 0).reshape(9, c * o)  # [(y, x), (c, o)]
    return (torch.kron(g, g) @ taps).view(36, c, o)


@functools.lru_cache(maxsize=None)
def transform_kernels():
    """The AVX2 transforms (the extension ``yolodet._fp32_avx2``, ``yolodet/_fp32/winograd_f32.h``), or None where
    it was not built, this CPU lacks AVX2 or FMA, or ``YOLODET_WINOGRAD_TRANSFORMS=torch`` asks for PyTorch's."""
    if os.environ.get("YOLODET_WINOGRAD_TRANSFORMS", "").lower() == "torch":
        return None
    return avx2_extension("_fp32_avx2")


def _transforms(dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    bt = torch.tensor(_BT, dtype=torch.float64)
    at = torch.tensor(_AT, dtype=torch.float64)
    return (torch.kron(bt, bt).to(device, dtype),  # [36, 36]: vec(B^T d B) = (B^T x B^T) vec(d)
            torch.kron(at, at).to(device, dtype))  # [16, 36]


class Winograd3x3:
    """One layer's F(4x4, 3x3) convolution on the CPU in fp32: 3x3 kernel, stride 1, padding 1, no dilation or
    groups; needs oneDNN (:func:`~yolodet.inference.packed.onednn_conv_available`).

    Calling it on x [N, C, H, W] (any memory format; channels_last avoids a copy) gives [N, O, H, W] in channels_last
    memory, bias added (the activation is the caller's: the output is a fresh tensor, free to modify in place). The
    36 products run as *one* grouped 1x1 oneDNN convolution (:meth:`products`: 36 groups, the tiles as its pixels,
    the bias folded in). ``weight`` is kept by reference; the only copy of the transformed weights is oneDNN's
    packed one per tile count (4x the layer's weights; rebuilt in ~10 ms when a new input size comes).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        if weight.shape[-2:] != (3, 3):
            raise ValueError(f"Winograd F(4x4, 3x3) needs 3x3 kernels, got {tuple(weight.shape)}")
        self.weight = weight  # [O, C, 3, 3]: the caller's tensor, not a copy
        self.bias = _grouped_bias(bias, weight.shape[0], weight.dtype, weight.device)  # [36 O]
        self.kb, self.ka = _transforms(weight.dtype, weight.device)
        self._packed = PackedWeights()  # tile count -> the grouped weights in oneDNN's layout

    def products(self, v: torch.Tensor) -> torch.Tensor:
        """The 36 products of every tile, bias included: transformed tiles v [T, 36, C] (contiguous) ->
        [T, 36, O] (a view of NHWC memory)."""
        t, c = v.shape[0], self.weight.shape[1]
        packed = self._packed.get(t, lambda: torch.ops.mkldnn._reorder_convolution_weight(
            _grouped_weights(winograd_weights(self.weight)), [0, 0], [1, 1], [1, 1], 36, [1, 36 * c, t, 1]))
        pixels = v.view(1, t, 1, 36 * c).permute(0, 3, 1, 2)  # NHWC [1, 36 C, T, 1]: a view, no copy
        out = torch.ops.mkldnn._convolution_pointwise(pixels, packed, self.bias, [0, 0], [1, 1], [1, 1], 36,
                                                      "none", [], "")
        return out.permute(0, 2, 3, 1).reshape(t, 36, -1)

    def __call__(self, x: torch.Tensor, slope: float | None = None) -> torch.Tensor:
        """x [N, C, H, W] -> [N, O, H, W] (channels_last), bias added; ``slope``: then ``max(y, slope * y)``
        (leaky; 0: relu; 1 or None: no activation)."""
        n, c, h, w = x.shape
        if c != self.weight.shape[1]:
            raise ValueError(f"weights {tuple(self.weight.shape)} do not fit an input of {c} channels")
        kernels = transform_kernels()
        if kernels is not None and x.device.type == "cpu" and x.dtype == torch.float32:
            return self._with_kernels(kernels, x, slope)
        m = TILE
        th, tw = -(-h // m), -(-w // m)  # tiles per column / row
        # Zero padding: 1 for the convolution, plus what completes the last tile.
        xp = F.pad(x, (1, tw * m + 1 - w, 1, th * m + 1 - h)).permute(0, 2, 3, 1)  # [N, Hp, Wp, C] view
        sn, sh, sw, sc = xp.stride()
        tiles = xp.as_strided((n, th, tw, 6, 6, c), (sn, m * sh, m * sw, sh, sw, sc))
        d = tiles.reshape(n * th * tw, 36, c)  # the overlapping 6x6 tiles, copied: [T, 36, C]
        prod = self.products(torch.matmul(self.kb, d))  # [T, 36, O]
        o = prod.shape[-1]
        y = torch.matmul(self.ka, prod)  # [T, 16, O]
        y = y.view(n, th, tw, m, m, o).permute(0, 1, 3, 2, 4, 5).reshape(n, th * m, tw * m, o)
        y = y[:, :h, :w].permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)  # [N, O, H, W]
        return y if slope is None or slope == 1.0 else F.leaky_relu_(y, slope)

    def _with_kernels(self, kernels, x: torch.Tensor, slope: float | None) -> torch.Tensor:
        """:meth:`__call__` with the transforms in yolodet's AVX2 kernels: NHWC x -> [T, 36, C] tiles, the
        products, then [T, 36, O] -> NHWC output with the activation, each one pass over its data."""
        n, c, h, w = x.shape
        nhwc = x.detach().contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)  # [N, H, W, C]
        threads = torch.get_num_threads()
        v = torch.empty(n * -(-h // TILE) * -(-w // TILE), 36, c, dtype=torch.float32)
        kernels.winograd_input(nhwc.numpy(), v.numpy(), n, h, w, c, threads)
        prod = self.products(v).contiguous()  # [T, 36, O] (already contiguous: NHWC memory)
        o = prod.shape[-1]
        y = torch.empty(n, h, w, o, dtype=torch.float32)
        kernels.winograd_output(prod.numpy(), y.numpy(), n, h, w, o, 1.0 if slope is None else float(slope),
                                threads)
        return y.permute(0, 3, 1, 2)  # [N, O, H, W], channels_last


def _grouped_weights(u: torch.Tensor) -> torch.Tensor:
    """[36, C, O] transformed weights -> the weights [36 O, C, 1, 1] of a grouped 1x1 convolution (36 groups)
    that computes the 36 products of every tile at once."""
    p, c, o = u.shape
    return u.permute(0, 2, 1).reshape(p * o, c, 1, 1).contiguous()


def _grouped_bias(bias: torch.Tensor | None, out_channels: int, dtype: torch.dtype,
                  device: torch.device) -> torch.Tensor:
    """A conv's [O] bias (or None) -> the [36 O] bias of :func:`_grouped_weights`' convolution: the bias on the
    product of the interpolation point (1, 1) only (tile position 7), zero elsewhere. The output transform maps that
    position to every output of the tile with weight 1 (``A^T``'s second column is all ones), so the bias is added
    inside the products instead of in a pass of its own."""
    grouped = torch.zeros(36, out_channels, dtype=dtype, device=device)
    if bias is not None:
        grouped[7] = bias
    return grouped.view(-1)
