"""3x3 stride-1 convolutions by Winograd's minimal filtering F(4x4, 3x3), for the fp32 CPU inference path.

A direct 3x3 convolution spends 9 multiply-adds per output value and input channel; F(4x4, 3x3) computes a 4x4
output tile from a 6x6 input tile with 36, i.e. 2.25 per output (Lavin & Gray, "Fast Algorithms for Convolutional
Neural Networks", 2016; the interpolation points 0, 1, -1, 2, -2 and infinity). The work becomes three matrix
products, all run by the BLAS:

1. input transform ``V = B^T d B`` of every overlapping 6x6 tile ``d`` (a [36, 36] matrix on the tile axis),
2. 36 independent ``[tiles, C] @ [C, O]`` products with the transformed weights ``U = G g G^T`` (batched),
3. output transform ``Y = A^T M A`` (a [16, 36] matrix), then bias and activation.

Why: on a 2-core AVX-512 EPYC, oneDNN's direct fp32 convolution already runs at the cores' peak, so only fewer
multiplications make it faster. OpenCV DNN does the same for its 3x3 convolutions. Measured there (one layer
alone, warm caches, one image, ms, direct oneDNN with fused leaky -> Winograd): 128->256 @26x26 1.71 -> 1.07,
384->256 @26 5.04 -> 3.24, 128->256 @52 7.02 -> 4.05, 256->512 @26 6.69 -> 4.11; but 512->1024 @13 6.77 -> 8.03
(a 13x13 map is only 16 tiles: the products are too thin), 32->64 @104 1.79 -> 2.45 (few channels: the
transforms dominate), and 64-channel inputs anywhere between 0.7x and 1.4x from run to run.
:func:`winograd_pays` encodes where it wins. Inside a whole network the gain is smaller (the 4x larger
transformed weights come from memory, not the caches): yolov3's 22 such layers at 416 take ~5.4 instead of
~7.2 ms each.

Accuracy: the transforms add rounding; one layer's outputs stay within ~1e-5 relative of the exact convolution
(direct: ~1e-6), well inside the 1e-4 that the optimised model promises. fp32 only: the transforms amplify
rounding (entries up to 5 and 8), which bf16's 8 significant bits cannot spare; reduced precisions keep the
direct convolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["TILE", "Winograd3x3", "winograd_conv3x3", "winograd_pays", "winograd_weights"]

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


def winograd_pays(in_channels: int, out_channels: int, height: int, width: int) -> bool:
    """Whether F(4x4, 3x3) beats oneDNN's direct convolution for this layer (fp32, CPU; measured on a 2-core
    AVX-512 EPYC, see the module docstring): at least 128 input and output channels, so that the 36 products
    dominate the transforms (this also leaves out the few-channel full-resolution layers), and a map of at least
    19x19, i.e. 25 tiles or more (13x13 gives 16: the products are too thin)."""
    return in_channels >= 128 and out_channels >= 128 and min(height, width) >= 19


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


def _transforms(dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    bt = torch.tensor(_BT, dtype=torch.float64)
    at = torch.tensor(_AT, dtype=torch.float64)
    return (torch.kron(bt, bt).to(device, dtype),  # [36, 36]: vec(B^T d B) = (B^T x B^T) vec(d)
            torch.kron(at, at).to(device, dtype))  # [16, 36]


class Winograd3x3:
    """One layer's F(4x4, 3x3) convolution: 3x3 kernel, stride 1, padding 1, no dilation or groups.

    Calling it on x [N, C, H, W] (channels_last is fastest) gives [N, O, H, W] in channels_last memory, bias added
    (the activation is the caller's: the output is a fresh tensor, free to modify in place).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.u = winograd_weights(weight)  # [36, C, O]
        self.bias = bias
        self.kb, self.ka = _transforms(weight.dtype, weight.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return winograd_conv3x3(x, self.u, self.bias, transforms=(self.kb, self.ka))


def winograd_conv3x3(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None = None, *,
                     transforms: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """``F.conv2d(x, w, bias, stride=1, padding=1)`` computed by F(4x4, 3x3), ``u = winograd_weights(w)``.

    Args:
        x: [N, C, H, W] input, any memory format (channels_last avoids a copy).
        u: [36, C, O] transformed weights.
        bias: [O] or None.
        transforms: the ([36, 36], [16, 36]) transform matrices in ``x``'s dtype/device (built when None).

    Returns:
        [N, O, H, W], channels_last memory.
    """
    n, c, h, w = x.shape
    if u.shape[:2] != (36, c):
        raise ValueError(f"transformed weights {tuple(u.shape)} do not fit an input of {c} channels")
    kb, ka = transforms if transforms is not None else _transforms(x.dtype, x.device)
    m = TILE
    th, tw = -(-h // m), -(-w // m)  # tiles per column / row
    # Zero padding: 1 for the convolution, plus what completes the last tile.
    xp = F.pad(x, (1, tw * m + 1 - w, 1, th * m + 1 - h)).permute(0, 2, 3, 1)  # [N, Hp, Wp, C] view
    sn, sh, sw, sc = xp.stride()
    tiles = xp.as_strided((n, th, tw, 6, 6, c), (sn, m * sh, m * sw, sh, sw, sc))
    d = tiles.reshape(n * th * tw, 36, c)  # the overlapping 6x6 tiles, copied: [T, 36, C]
    v = torch.matmul(kb, d).transpose(0, 1)  # [36, T, C] (a view)
    prod = torch.bmm(v, u)  # [36, T, O]
    o = prod.shape[-1]
    y = torch.matmul(ka, prod.transpose(0, 1))  # [T, 16, O]
    y = y.view(n, th, tw, m, m, o).permute(0, 1, 3, 2, 4, 5).reshape(n, th * m, tw * m, o)
    y = y[:, :h, :w].permute(0, 3, 1, 2)  # [N, O, H, W] view of NHWC memory
    if bias is not None:
        return torch.add(y, bias.view(1, -1, 1, 1))  # also makes a cropped view dense again
    return y.contiguous(memory_format=torch.channels_last)
