"""Shared test fixtures: where ``../shared`` is, and Darknet models with random but realistic weights."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

from yolodet.modeling.blocks.conv import ConnectedBlock, ConvBlock

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
REFERENCE_CFGS = sorted((SHARED / "data" / "darknet-cfg").glob("*.cfg"))
OFFICIAL_TINY = SHARED / "weights" / "yolov3-tiny.weights"
COCO128 = SHARED / "data" / "coco128"
ORACLE = SHARED / "oracle"


def need_shared(path: Path) -> Path:
    """Skip the calling test cleanly when a ``../shared`` file is absent."""
    if not path.exists():
        pytest.skip(f"{path} is not available (../shared is absent)")
    return path


def _weighted_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Every conv/connected block (also inside recurrent layers), and every other layer with its own tensors."""
    out = []
    for layer in model.layers:
        inner = [m for m in layer.modules() if isinstance(m, (ConvBlock, ConnectedBlock))]
        out.extend(inner if inner else [layer])
    return out


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fill every weighted layer with random values, BN statistics included (non-trivial: mean != 0, var != 1),
    scaled so activations stay O(1) through 100+ layers (``[local]`` weights by their fan-in too)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in _weighted_modules(model):
            if isinstance(layer, ConvBlock):
                w, bn = layer.conv.weight, layer.bn
                w.copy_(torch.randn(w.shape, generator=g) * w[0].numel() ** -0.5)
                if bn is None:
                    layer.conv.bias.copy_(torch.randn(w.shape[0], generator=g) * 0.1)
            elif isinstance(layer, ConnectedBlock):
                w, bn = layer.fc.weight, layer.bn
                w.copy_(torch.randn(w.shape, generator=g) * w.shape[1] ** -0.5)
                if bn is None:
                    layer.fc.bias.copy_(torch.randn(w.shape[0], generator=g) * 0.1)
            elif isinstance(getattr(layer, "bn", None), torch.nn.BatchNorm2d):  # [batchnorm]
                bn = layer.bn
                bn.bias.copy_(torch.randn(bn.num_features, generator=g) * 0.1)
            elif layer.darknet_tensors():  # [local], [implicit], weighted [shortcut] ...: every tensor random
                bn = None
                for t in layer.darknet_tensors():
                    scale = t.shape[-1] ** -0.5 if t.dim() > 2 else 0.5
                    t.copy_(torch.randn(t.shape, generator=g) * scale)
            else:
                continue
            if bn is not None:
                n = bn.num_features
                bn.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.25)
                bn.bias.copy_(torch.randn(n, generator=g) * 0.1)
                bn.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                bn.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.25)
    return model


@pytest.fixture(scope="session")
def oracle():
    """The darknet_oracle module, built once per session; skips without ../shared or a C compiler."""
    if not (ORACLE / "darknet_oracle.py").exists():
        pytest.skip(f"{ORACLE} is not available (../shared is absent)")
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        pytest.skip("no C compiler: the Darknet oracle cannot be built")
    sys.path.insert(0, str(ORACLE))
    try:
        import darknet_oracle
    finally:
        sys.path.remove(str(ORACLE))
    try:
        darknet_oracle.binary()
    except darknet_oracle.OracleError as exc:
        pytest.skip(f"the Darknet oracle does not build here: {str(exc).splitlines()[0]}")
    return darknet_oracle


def frozen_conv(c: int, o: int, size: int = 3, act: str = "leaky", seed: int = 0, stride: int = 1):
    """A BN-folded ``size`` x ``size`` [convolutional] (padding size // 2) with c inputs and o filters, random
    weights: the :class:`~yolodet.inference.frozen.FrozenConv` the int8 layers are built from."""
    from yolodet.inference.frozen import FrozenConv, fold_batchnorm
    from yolodet.modeling.model import Darknet

    cfg = (f"[net]\nwidth=16\nheight=16\nchannels={c}\n[convolutional]\nbatch_normalize=1\nfilters={o}\n"
           f"size={size}\nstride={stride}\npad=1\nactivation={act}\n")
    conv = fold_batchnorm(randomize(Darknet.from_cfg_text(cfg), seed=seed).eval()).layers[0]
    assert isinstance(conv, FrozenConv)
    return conv


def lane_quads(codes: torch.Tensor) -> torch.Tensor:
    """[..., C] int8 weight codes -> [..., ceil(C / 8), 2] sums of |codes| over the channel quads that share one
    16-bit lane in the AVX2 product block (``yolodet/_int8/products_u8s8.h``): {8m, 8m+1, 8m+4, 8m+5} and
    {8m+2, 8m+3, 8m+6, 8m+7}."""
    c = codes.shape[-1]
    padded = torch.zeros(*codes.shape[:-1], -(-c // 8) * 8, dtype=torch.int64)
    padded[..., :c] = codes.abs().long()
    return padded.view(*codes.shape[:-1], -1, 2, 2, 2).sum((-3, -1))


# Input channels 8m..8m+7 weighted 1, 1, 0, 0, 1, 1, 0, 0: everything on one lane's quad, so that weights bounded
# per four consecutive channels instead (2 + 2) would reach 2 x 128 there and overflow the 16-bit sum.
LANE_PATTERN = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0])


def assert_kernel_output(out: torch.Tensor, ref: torch.Tensor, shape: tuple[int, ...]) -> None:
    """An int8 AVX2 layer's output against its float64 reference: ``shape``, fp32, channels_last, and within 1e-5 of
    the reference's largest magnitude (the kernels' integer sums are exact; only the float epilogue rounds)."""
    assert out.shape == ref.shape == shape and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert float((out - ref).abs().max()) <= 1e-5 * float(ref.abs().max()), float((out - ref).abs().max())
