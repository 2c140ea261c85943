"""Build-time size limits: a pooling window or stride larger than its input, an upsample stride past its limit and
any layer output past ``MAX_OUTPUT_ELEMENTS`` are CfgErrors naming file:line and key, from ``Darknet.from_cfg``
and from ``build_for_info`` alike (``info`` refuses what ``detect`` refuses)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from conftest import FIXTURES
from yolodet.cfg import CfgError
from yolodet.modeling.blocks.structural import MAX_POOL_WINDOW, MAX_UPSAMPLE
from yolodet.modeling.info import build_for_info
from yolodet.modeling.model import MAX_OUTPUT_ELEMENTS, Darknet

TINY = (FIXTURES / "tiny.cfg").read_text()


def _edit(old: str, new: str) -> str:
    assert TINY.count(old) >= 1, old
    return TINY.replace(old, new, 1)


def _both(tmp_path: Path, text: str) -> list[CfgError]:
    """The errors of Darknet.from_cfg and build_for_info on ``text`` (both must raise)."""
    path = tmp_path / "bad.cfg"
    path.write_text(text)
    errors = []
    for build in (Darknet.from_cfg, build_for_info):
        with pytest.raises(CfgError) as info:
            build(path)
        errors.append(info.value)
    assert str(errors[0]) == str(errors[1])
    return errors


@pytest.mark.parametrize("stride", [1, 2])
def test_a_huge_maxpool_window_is_refused(tmp_path: Path, stride: int) -> None:
    """Stride 1 used to die in F.pad (``Storage size calculation overflowed``), stride 2 to hang."""
    text = _edit("[maxpool]\nsize=2\nstride=2", f"[maxpool]\nsize=1000000000\nstride={stride}")
    err = _both(tmp_path, text)[0]
    assert re.fullmatch(r".*bad\.cfg:\d+: \[maxpool #1\] size: the window \(1000000000 x 1000000000\) is larger "
                        r"than the input \(64 x 64\)", str(err)), err


def test_a_pooling_stride_larger_than_its_input_is_refused(tmp_path: Path) -> None:
    err = _both(tmp_path, _edit("[maxpool]\nsize=2\nstride=2", "[maxpool]\nsize=2\nstride=65"))[0]
    assert str(err).endswith("[maxpool #1] stride: stride 65 is larger than the input (64 x 64)")
    err = _both(tmp_path, _edit("[maxpool]\nsize=2\nstride=2", "[maxpool]\nsize=2\nstride=2\nstride_x=100"))[0]
    assert str(err).endswith("[maxpool #1] stride_x: stride x 100 is larger than the input (64 x 64)")


def test_small_windows_past_a_small_input_still_build() -> None:
    """yolov4's SPP (size=13) on a 4 x 4 input (the network at 128): Darknet runs it, so does yolodet."""
    text = "[net]\nwidth=4\nheight=4\n[maxpool]\nsize=13\nstride=1\n[maxpool]\nsize=2\nstride=4\n"
    model = Darknet.from_cfg_text(text)
    assert [m.out_shape for m in model.layers] == [(3, 4, 4), (3, 1, 1)]  # stride = input: legal
    too_big = text.replace("size=13", f"size={MAX_POOL_WINDOW + 1}")
    with pytest.raises(CfgError, match="is larger than the input"):
        Darknet.from_cfg_text(too_big)


def test_upsample_stride_limit(tmp_path: Path) -> None:
    err = _both(tmp_path, _edit("[upsample]\nstride=2", f"[upsample]\nstride={MAX_UPSAMPLE + 1}"))[0]
    assert str(err).endswith(f"[upsample #16] stride: stride {MAX_UPSAMPLE + 1} is larger than the limit of "
                             f"{MAX_UPSAMPLE} (Darknet cfgs use 2 or 4)")


@pytest.mark.parametrize("old, new, section", [
    ("layers = -1, 5", "layers = " + ", ".join(["-1"] * 20000), "route #17"),  # 20000 x 48 x 32 x 32
    ("filters=16\nsize=3\nstride=1\npad=1\nactivation=leaky",
     "filters=16\nsize=3\nstride=1\npadding=100000\nactivation=leaky", "convolutional #0"),
    ("[net]\nwidth=64\nheight=64", "[net]\nwidth=60000\nheight=60000", "convolutional #0"),
], ids=["route", "padding", "net-size"])
def test_an_output_past_the_element_limit_is_refused(tmp_path: Path, old: str, new: str, section: str) -> None:
    err = _both(tmp_path, _edit(old, new))[0]
    match = re.fullmatch(rf".*bad\.cfg:\d+: \[{section}\]: this layer's output \((\d+) x (\d+) x (\d+), input "
                         rf"\(.*\)\) would need (\d+) elements per image, more than the limit of "
                         rf"{MAX_OUTPUT_ELEMENTS}", str(err))
    assert match, err
    c, h, w, n = map(int, match.groups())
    assert c * h * w == n > MAX_OUTPUT_ELEMENTS


def test_the_limit_leaves_room_for_real_cfgs() -> None:
    """The shipped yolov4 at 608 (the largest official input) is 23 times below it."""
    model = Darknet.from_cfg(Path(__file__).resolve().parents[1] / "cfg" / "yolo-v4.cfg")
    assert model.net.width == 608
    largest = max(torch.Size(m.out_shape).numel() for m in model.layers)
    assert largest == 32 * 608 * 608 and MAX_OUTPUT_ELEMENTS > 20 * largest


@pytest.mark.parametrize("key, value", [("dilation", 2**63), ("stride", 2**63), ("stride_x", 33)])
def test_convolution_strides_and_dilations_fit_the_padded_input(tmp_path: Path, key: str, value: int) -> None:
    """Found by the fuzzer: a 1x1 conv with dilation=2**63 built (the kernel has one tap) but torch's conv2d
    overflowed at the first forward."""
    old = "filters=16\nsize=1\nstride=1\npad=1\nactivation=relu"
    new = old.replace("stride=1", f"stride=1\n{key}={value}" if key != "stride" else f"stride={value}")
    err = _both(tmp_path, _edit(old, new))[0]
    assert str(err).endswith(f"[convolutional #8] {key}: {key.replace('_', ' ')} {value} is larger than the "
                             "padded input (32 x 32)"), err
