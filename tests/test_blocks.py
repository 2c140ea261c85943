"""Darknet layer rules on hand-computed fixtures; every block is built from a small cfg through the model.

Most fixtures start with ``[maxpool] size=1 stride=1`` as layer 0: an identity that gives later layers an
earlier layer to refer to.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from conftest import FIXTURES, REFERENCE_CFGS, randomize
from yolodet.modeling.blocks.conv import ACTIVATIONS
from yolodet.cfg import CfgError, parse_cfg_text
from yolodet.modeling.model import Darknet

IDENTITY = "[maxpool]\nsize=1\nstride=1\n"


def _net(c: int, h: int, w: int) -> str:
    return f"[net]\nwidth={w}\nheight={h}\nchannels={c}\n"


def _outputs(model: Darknet, x: torch.Tensor) -> list[torch.Tensor]:
    """The output of every layer (what ``forward`` computes, all of it kept)."""
    outs: list[torch.Tensor] = []
    with torch.no_grad():
        for layer in model.layers:
            x = layer(x, [outs[s] for s in layer.sources])
            outs.append(x)
    return outs


def _run(text: str, x: torch.Tensor) -> torch.Tensor:
    """Build ``text``, check build-time shapes, return the last layer's output for ``x`` ([C, H, W] or batched)."""
    model = Darknet.from_cfg_text(text).eval()
    batched = x if x.dim() == 4 else x[None]
    outs = _outputs(model, batched)
    for layer, out in zip(model.layers, outs):
        assert tuple(out.shape[1:]) == layer.out_shape
    return outs[-1] if x.dim() == 4 else outs[-1][0]


def _x(c: int, h: int, w: int) -> torch.Tensor:
    """x[c, i, j] = 1 + c*h*w + i*w + j: distinct, increasing in flat (CHW) order."""
    return torch.arange(1, 1 + c * h * w, dtype=torch.float32).view(c, h, w)


# -- maxpool ----------------------------------------------------------------------------------------------------
def test_maxpool_size2_stride1_pads_right_and_bottom_with_minus_inf() -> None:
    x = torch.tensor([[[-6.0, -5.0, -4.0], [-3.0, -2.0, -1.0]]])  # increasing: each window's max is bottom-right
    out = _run(_net(1, 2, 3) + "[maxpool]\nsize=2\nstride=1\n", x)
    # zero padding would put 0 in the last row/column; left/top padding would shift the windows
    assert out.tolist() == [[[-2.0, -1.0, -1.0], [-2.0, -1.0, -1.0]]]
    y = torch.tensor([[[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0]]])  # decreasing: each window's max is top-left
    assert _run(_net(1, 2, 3) + "[maxpool]\nsize=2\nstride=1\n", y).tolist() == y.tolist()


def test_maxpool_size2_stride2_on_13_gives_7() -> None:
    x = (torch.arange(169, dtype=torch.float32) - 1000).view(1, 13, 13)  # negative, increasing
    out = _run(_net(1, 13, 13) + "[maxpool]\nsize=2\nstride=2\n", x)
    assert out.shape == (1, 7, 7)
    assert out[0, 0, 0] == x[0, 1, 1] == -986
    assert out[0, 0, 6] == x[0, 1, 12] == -975  # last column: input column 12 alone, not max(x, 0)
    assert out[0, 6, 0] == x[0, 12, 1] == -843
    assert out[0, 6, 6] == x[0, 12, 12] == -832
    idx = torch.tensor([1, 3, 5, 7, 9, 11, 12])
    assert torch.equal(out[0], x[0][idx][:, idx])


def test_maxpool_size5_stride1_is_symmetric() -> None:
    up = torch.tensor([[-6.0, -5.0, -4.0, -3.0, -2.0, -1.0]])
    x = torch.stack([up, up.flip(-1)])  # [2, 1, 6]: channel 0 increasing, channel 1 decreasing
    out = _run(_net(2, 1, 6) + "[maxpool]\nsize=5\nstride=1\n", x)
    assert out.tolist() == [[[-4.0, -3.0, -2.0, -1.0, -1.0, -1.0]],  # window reaches 2 to the right
                            [[-1.0, -1.0, -1.0, -2.0, -3.0, -4.0]]]  # ... and 2 to the left


def _darknet_maxpool(x: torch.Tensor, size: int, sy: int, sx: int, padding: int) -> torch.Tensor:
    """A transliteration of Darknet's ``forward_maxpool_layer`` loops (one image, [C, H, W])."""
    c, h, w = x.shape
    out_h, out_w = (h + padding - size) // sy + 1, (w + padding - size) // sx + 1
    offset = -(padding // 2)
    out = torch.empty(c, out_h, out_w)
    for k in range(c):
        for i in range(out_h):
            for j in range(out_w):
                best = -math.inf
                for n in range(size):
                    for m in range(size):
                        ch, cw = offset + i * sy + n, offset + j * sx + m
                        if 0 <= ch < h and 0 <= cw < w:
                            best = max(best, float(x[k, ch, cw]))
                out[k, i, j] = best
    return out


@pytest.mark.parametrize("size, stride, padding, h, w", [
    (2, 2, None, 13, 13), (2, 2, None, 6, 5), (2, 1, None, 5, 4), (3, 2, None, 7, 6), (3, 1, None, 4, 4),
    (5, 1, None, 6, 5), (9, 1, None, 5, 7), (13, 1, None, 4, 6), (3, 2, 0, 7, 7), (2, 2, 2, 5, 5), (4, 3, 1, 9, 8),
    (3, 1, 5, 3, 4),
])
def test_maxpool_matches_darknet_loops(size: int, stride: int, padding: int | None, h: int, w: int) -> None:
    text = _net(2, h, w) + f"[maxpool]\nsize={size}\nstride={stride}\n"
    if padding is not None:
        text += f"padding={padding}\n"
    x = -torch.rand(2, h, w, generator=torch.Generator().manual_seed(size * 100 + h)) - 0.5  # all negative
    expected = _darknet_maxpool(x, size, stride, stride, size - 1 if padding is None else padding)
    assert torch.equal(_run(text, x), expected)


def test_maxpool_stride_x_y() -> None:
    x = -torch.rand(1, 6, 7, generator=torch.Generator().manual_seed(0))
    out = _run(_net(1, 6, 7) + "[maxpool]\nsize=2\nstride_x=2\nstride_y=1\n", x)
    assert out.shape == (1, 6, 4)
    assert torch.equal(out, _darknet_maxpool(x, 2, 1, 2, 1))


# -- route ------------------------------------------------------------------------------------------------------
def test_route_groups_slice_each_input_then_concat() -> None:
    x = _x(6, 2, 2)
    text = (_net(6, 2, 2) + IDENTITY  # 0: x, 6 channels
            + "[route]\nlayers=0\ngroups=3\ngroup_id=0\n"  # 1: x[0:2], 2 channels
            + "[route]\nlayers=0,1\ngroups=2\ngroup_id=1\n")  # 2: x[3:6] ++ (x[0:2])[1:2] = x[3, 4, 5, 1]
    out = _run(text, x)
    assert torch.equal(out, x[[3, 4, 5, 1]])
    # slicing after concatenating would give channels 4..7 of [x0..x5, x0, x1] = x[4, 5, 0, 1]
    assert not torch.equal(out, x[[4, 5, 0, 1]])


def test_route_concat_order_follows_layers() -> None:
    x = _x(2, 2, 2)
    text = _net(2, 2, 2) + IDENTITY + "[route]\nlayers=0\ngroups=2\ngroup_id=1\n" + "[route]\nlayers=-1, 0\n"
    assert torch.equal(_run(text, x), x[[1, 0, 1]])


# -- shortcut ---------------------------------------------------------------------------------------------------
def test_shortcut_same_shape_and_several_froms() -> None:
    x = _x(2, 2, 2)
    text = _net(2, 2, 2) + IDENTITY + IDENTITY + "[shortcut]\nfrom=0, -2\nactivation=leaky\n"
    assert torch.equal(_run(text, x - 10), torch.nn.functional.leaky_relu(3 * (x - 10), 0.1))


def test_shortcut_from_fewer_channels_adds_into_the_first_channels() -> None:
    x = _x(4, 2, 2)
    text = (_net(4, 2, 2) + IDENTITY  # 0: x, 4 channels
            + "[route]\nlayers=0\ngroups=2\ngroup_id=1\n"  # 1: x[2:4]
            + "[route]\nlayers=0\n"  # 2: x again (the shortcut's input)
            + "[shortcut]\nfrom=1\n")  # 3: x + [x2, x3, 0, 0]
    out = _run(text, x)
    assert out.shape == (4, 2, 2)
    assert out[0].tolist() == [[1 + 9, 2 + 10], [3 + 11, 4 + 12]]
    assert out[1].tolist() == [[5 + 13, 6 + 14], [7 + 15, 8 + 16]]
    assert torch.equal(out[2:], x[2:])


def test_shortcut_from_more_channels_uses_the_first_channels() -> None:
    x = _x(4, 2, 2)
    text = (_net(4, 2, 2) + IDENTITY + "[route]\nlayers=0\ngroups=2\ngroup_id=1\n"  # 1: x[2:4], the input
            + "[shortcut]\nfrom=0\n")  # 2: x[2:4] + x[0:2]
    assert torch.equal(_run(text, x), x[2:] + x[:2])


def test_shortcut_different_spatial_size_pjreddie_rule() -> None:
    """pjreddie's ``shortcut_cpu``: a larger ``from`` is subsampled (stride), a smaller one is added at every
    ``sample``-th cell; AlexeyAB's Darknet refuses both."""
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]])  # [2, 2, 2]
    up = _run(_net(2, 2, 2) + IDENTITY + "[upsample]\nstride=2\n", x)
    assert up[0, 0].tolist() == [1, 1, 2, 2] and up.shape == (2, 4, 4)
    # larger from (4x4) onto a 2x2 input: from[2j, 2i] is added
    more = _run(_net(2, 2, 2) + IDENTITY + "[upsample]\nstride=2\n[route]\nlayers=0\n[shortcut]\nfrom=1\n", x)
    assert torch.equal(more, 2 * x)
    # smaller from (2x2) onto a 4x4 input: added at (2j, 2i) only
    fewer = _run(_net(2, 2, 2) + IDENTITY + "[upsample]\nstride=2\n[shortcut]\nfrom=0\n", x)
    expected = up.clone()
    expected[:, ::2, ::2] += x
    assert torch.equal(fewer, expected)


def test_shortcut_different_sizes_refused_with_several_froms() -> None:
    text = _net(2, 2, 2) + IDENTITY + "[upsample]\nstride=2\n" + IDENTITY + "[shortcut]\nfrom=0, 1\n"
    with pytest.raises(CfgError, match="only in pjreddie's Darknet"):
        Darknet.from_cfg_text(text)


def test_shortcut_weighted_per_channel_softmax() -> None:
    x = _x(2, 2, 2)
    text = _net(2, 2, 2) + IDENTITY + IDENTITY + ("[shortcut]\nfrom=0\nweights_type=per_channel\n"
                                                  "weights_normalization=softmax\n")
    model = Darknet.from_cfg_text(text).eval()
    w = torch.tensor([[0.0, 1.0], [2.0, -1.0]])  # [n+1 = 2, C = 2]
    with torch.no_grad():
        model.layers[2].weight.copy_(w)
        out = model(x[None])[0][0]
    e = torch.exp(w - w.max(0).values)
    norm = e / (1e-4 + e.sum(0))
    assert torch.allclose(out, x * norm[0].view(2, 1, 1) + x * norm[1].view(2, 1, 1), atol=1e-6)
    assert [t.shape for t in model.layers[2].darknet_tensors()] == [(2, 2)]


# -- scale_channels ---------------------------------------------------------------------------------------------
def test_scale_channels_per_channel() -> None:
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]])
    text = _net(2, 2, 2) + IDENTITY + "[avgpool]\n[scale_channels]\nfrom=-2\n"  # x * mean per channel (2.5, 6.5)
    out = _run(text, torch.stack([x, 2 * x]))
    assert out[0].tolist() == [[[2.5, 5.0], [7.5, 10.0]], [[32.5, 39.0], [45.5, 52.0]]]
    assert torch.equal(out[1], 4 * out[0])  # each image scaled by its own means


def test_scale_channels_scale_wh() -> None:
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]])
    text = (_net(2, 2, 2) + IDENTITY + "[route]\nlayers=0\ngroups=2\ngroup_id=1\n"  # 1: [1, 2, 2] = x[1]
            + "[scale_channels]\nfrom=0\nscale_wh=1\n")  # x * x[1] at every position
    assert _run(text, x).tolist() == [[[5.0, 12.0], [21.0, 32.0]], [[25.0, 36.0], [49.0, 64.0]]]


# -- upsample ---------------------------------------------------------------------------------------------------
def test_upsample_stride_and_scale() -> None:
    x = torch.tensor([[[1.0, 2.0]]])
    out = _run(_net(1, 1, 2) + "[upsample]\nstride=3\nscale=0.5\n", x)
    assert out.tolist() == [[[0.5, 0.5, 0.5, 1.0, 1.0, 1.0]] * 3]
    assert _run(_net(1, 1, 2) + "[upsample]\n", x).tolist() == [[[1.0, 1.0, 2.0, 2.0]] * 2]  # default stride 2


# -- convolutional ----------------------------------------------------------------------------------------------
def _conv_1x1(activation: str | None) -> Darknet:
    """A 1-channel 1x1 conv with weight 1 and bias 0, so its output is activation(x)."""
    text = _net(1, 1, 5) + "[convolutional]\nfilters=1\nsize=1\n" + (f"activation={activation}\n" if activation
                                                                      else "")
    model = Darknet.from_cfg_text(text).eval()
    with torch.no_grad():
        model.layers[0].conv.weight.fill_(1.0)
        model.layers[0].conv.bias.zero_()
    return model


_VALUES = [-2.0, -0.5, 0.0, 0.5, 3.0]
_SIGMOID = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
_EXPECTED = {
    "leaky": lambda v: v if v > 0 else 0.1 * v,  # Darknet's slope is 0.1 (PyTorch's default is 0.01)
    "linear": lambda v: v,
    "logistic": _SIGMOID,
    "relu": lambda v: max(v, 0.0),
    "relu6": lambda v: min(max(v, 0.0), 6.0),
    "mish": lambda v: v * math.tanh(math.log1p(math.exp(v))),
    "swish": lambda v: v * _SIGMOID(v),
    "tanh": math.tanh,
    "elu": lambda v: v if v > 0 else math.exp(v) - 1,
    "selu": lambda v: 1.0507 * (v if v > 0 else 1.6732 * (math.exp(v) - 1)),  # Darknet's float constants
    "gelu": lambda v: 0.5 * v * (1 + math.tanh(0.797885 * v + 0.035677 * v ** 3)),
    "loggy": lambda v: 2 * _SIGMOID(v) - 1,
    "relie": lambda v: v if v > 0 else 0.01 * v,
    "revleaky": lambda v: v if v > 0 else 0.1 * v,
    "ramp": lambda v: max(v, 0.0) + 0.1 * v,
    "plse": lambda v: 0.01 * (v + 4) if v < -4 else (0.01 * (v - 4) + 1 if v > 4 else 0.125 * v + 0.5),
    "hardtan": lambda v: min(max(v, -1.0), 1.0),
    "lhtan": lambda v: 0.001 * v if v < 0 else (0.001 * (v - 1) + 1 if v > 1 else v),
    "stair": lambda v: math.floor(v / 2) if math.floor(v) % 2 == 0 else v - math.floor(v) + math.floor(v / 2),
    "hard_mish": lambda v: v if v > 0 else (v * v / 2 + v if v > -2 else 0.0),
    "normalize_channels": lambda v: v / (1e-4 + v) if v > 0 else 0.0,  # one channel: relu(x) / (1e-4 + relu(x))
    "normalize_channels_softmax": lambda v: math.exp(v) / (1e-4 + math.exp(v)),
    "normalize_channels_softmax_maxval": lambda v: 1 / (1 + 1e-4),
}


@pytest.mark.parametrize("name", sorted(_EXPECTED))
def test_activation(name: str) -> None:
    x = torch.tensor(_VALUES).view(1, 1, 1, 5)
    with torch.no_grad():
        out = _conv_1x1(name)(x)[0].flatten().tolist()
    assert out == pytest.approx([_EXPECTED[name](v) for v in _VALUES], abs=1e-6)


def test_every_activation_is_checked() -> None:
    assert set(_EXPECTED) == set(ACTIVATIONS) | {"leaky"}


def test_default_activation_is_logistic() -> None:
    x = torch.tensor(_VALUES).view(1, 1, 1, 5)
    with torch.no_grad():
        out = _conv_1x1(None)(x)[0].flatten().tolist()
    assert out == pytest.approx([_SIGMOID(v) for v in _VALUES], abs=1e-7)


@pytest.mark.parametrize("keys, padding, out_hw", [
    ("size=3\npad=1\npadding=0\n", 1, 5),
    ("size=5\npad=1\npadding=7\n", 2, 5),
    ("size=3\npad=0\npadding=2\n", 2, 7),
    ("size=3\n", 0, 3),
    ("size=3\npadding=1\n", 1, 5),
    ("size=3\nstride=2\npad=1\n", 1, 3),
])
def test_conv_pad_overrides_padding(keys: str, padding: int, out_hw: int) -> None:
    model = Darknet.from_cfg_text(_net(1, 5, 5) + "[convolutional]\nfilters=1\nactivation=linear\n" + keys)
    assert model.layers[0].conv.padding == (padding, padding)
    assert model.layers[0].out_shape == (1, out_hw, out_hw)
    assert model(torch.zeros(1, 1, 5, 5))[0].shape == (1, 1, out_hw, out_hw)


def test_conv_zero_padding_values() -> None:
    model = Darknet.from_cfg_text(_net(1, 3, 3) + "[convolutional]\nfilters=1\nsize=3\npad=1\nactivation=linear\n")
    with torch.no_grad():
        model.layers[0].conv.weight.fill_(1.0)
        model.layers[0].conv.bias.zero_()
        out = model(torch.ones(1, 1, 3, 3))[0]
    assert out[0, 0].tolist() == [[4, 6, 4], [6, 9, 6], [4, 6, 4]]


def test_conv_batchnorm_eps_and_bias() -> None:
    text = _net(1, 1, 2) + "[convolutional]\nfilters=1\nsize=1\nbatch_normalize=1\nactivation=linear\n"
    model = Darknet.from_cfg_text(text).eval()
    block = model.layers[0]
    assert block.conv.bias is None and block.bn.eps == 1e-5
    with torch.no_grad():
        block.conv.weight.fill_(1.0)
        block.bn.weight.fill_(2.0)  # gamma
        block.bn.bias.fill_(1.0)  # beta
        block.bn.running_mean.fill_(3.0)
        block.bn.running_var.fill_(4.0 - 1e-5)  # sqrt(var + eps) = 2
        out = model(torch.tensor([[[[5.0, -1.0]]]]))[0]
    assert out.flatten().tolist() == pytest.approx([(5 - 3) / 2 * 2 + 1, (-1 - 3) / 2 * 2 + 1])


def test_conv_groups_and_dilation_shapes() -> None:
    """Darknet pads ``pad * dilation`` in im2col, so size=3 pad=1 keeps the size at any dilation."""
    text = _net(4, 9, 9) + "[convolutional]\nfilters=8\nsize=3\ngroups=2\ndilation=2\npad=1\n"
    model = Darknet.from_cfg_text(text)
    assert model.layers[0].conv.weight.shape == (8, 2, 3, 3) and model.layers[0].conv.padding == (2, 2)
    assert model.layers[0].out_shape == (8, 9, 9)
    assert model(torch.zeros(1, 4, 9, 9))[0].shape == (1, 8, 9, 9)
    # padding=0: Darknet's output size (7) and its dilated im2col (5) disagree: refused, not a third answer
    with pytest.raises(CfgError, match="dilation=2 needs pad=1"):
        Darknet.from_cfg_text(text.replace("pad=1", "padding=0"))


# -- classifier tail --------------------------------------------------------------------------------------------
def test_softmax_groups() -> None:
    x = torch.tensor([0.0, math.log(3.0), 0.0, 0.0]).view(4, 1, 1)
    out = _run(_net(4, 1, 1) + IDENTITY + "[softmax]\ngroups=2\n", x)
    assert out.flatten().tolist() == pytest.approx([0.25, 0.75, 0.5, 0.5])
    out = _run(_net(4, 1, 1) + IDENTITY + "[softmax]\n", x)
    assert out.flatten().tolist() == pytest.approx([1 / 6, 3 / 6, 1 / 6, 1 / 6])
    y = torch.tensor([0.0, 2 * math.log(3.0)]).view(2, 1, 1)
    out = _run(_net(2, 1, 1) + IDENTITY + "[softmax]\ntemperature=2\n", y)
    assert out.flatten().tolist() == pytest.approx([0.25, 0.75])


def test_dropout_and_cost_are_identity_at_inference() -> None:
    x = _x(2, 2, 2)
    text = _net(2, 2, 2) + IDENTITY + "[dropout]\nprobability=0.5\n[cost]\ntype=sse\n"
    assert torch.equal(_run(text, x), x)


def test_connected_flattens_chw() -> None:
    model = Darknet.from_cfg_text(_net(2, 1, 2) + "[connected]\noutput=1\nactivation=linear\n").eval()
    with torch.no_grad():
        model.layers[0].fc.weight.copy_(torch.tensor([[1.0, 10.0, 100.0, 1000.0]]))
        model.layers[0].fc.bias.fill_(0.5)
        out = model(torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]]))[0]
    assert out.shape == (1, 1, 1, 1) and out.item() == 4321.5


# -- build-time shapes equal run-time shapes for every layer of every cfg -------------------------------------
CFGS = [FIXTURES / "tiny.cfg", *REFERENCE_CFGS]


@pytest.mark.parametrize("cfg", CFGS, ids=[p.stem for p in CFGS])
def test_out_shape_matches_forward(cfg: Path) -> None:
    blocks = parse_cfg_text(cfg.read_text(), str(cfg))
    if cfg.parent != FIXTURES:  # a small, non-square input (odd multiples of 32) keeps this fast on a CPU
        blocks[0] = dataclasses.replace(blocks[0], options={**blocks[0].options, "width": "64", "height": "96"})
    model = randomize(Darknet(blocks).eval())
    x = torch.rand(1, model.net.channels, model.net.height, model.net.width, generator=torch.Generator().manual_seed(0))
    outs = _outputs(model, x)
    for i, (layer, out) in enumerate(zip(model.layers, outs)):
        assert tuple(out.shape) == (1, *layer.out_shape), f"layer {i} ({type(layer).__name__})"
        assert torch.isfinite(out).all(), f"layer {i}"
    with torch.no_grad():
        final = model(x)
    expected = [outs[h.layer] for h in model.heads] or [outs[-1]]
    assert len(final) == len(expected)
    for a, b in zip(final, expected):
        assert torch.equal(a, b)
    for head in model.heads:
        assert head.stride * model.layers[head.layer].out_shape[2] == model.net.width
