"""Training augmentation with ``torchvision.transforms.v2``: Darknet's jitter crop, HSV, flip, letterbox.

Every transform works on a sample dict ``{"image": tv_tensors.Image uint8[3, H, W], "boxes":
tv_tensors.BoundingBoxes (XYXY pixels), "labels": Tensor int64[N]}``; torchvision moves the boxes with the image.
Random draws come from torch's global generator, like torchvision's own transforms; the training dataset seeds
it per sample, so a sample's augmentation depends only on ``(seed, epoch, position)``, not on the worker.

The two Darknet-specific transforms:

* :class:`DarknetJitter` (``jitter=`` of the ``[yolo]`` layers, AlexeyAB ``load_data_detection``): each image
  side moves by a random ``[-jitter, jitter]`` share of the image size (outwards: padding, inwards: cropping),
  and the window is resized to the network size; with ``letter_box=1`` the window is first widened to the
  network's aspect ratio, so objects keep theirs. Built from ``F.crop``/``F.resize``/``F.pad`` on the part of the
  window inside the image (cheap: the full image is never padded).
* :class:`RandomHSV` (``hue``/``saturation``/``exposure`` of ``[net]``): Darknet's HSV-space jitter (hue shift
  ``uniform(-hue, hue)`` of the colour circle, saturation and value scaled by ``rand_scale``), done with OpenCV
  on uint8 like AlexeyAB. ``v2.ColorJitter`` differs (saturation blends with grey) and its hue path is ~10x
  slower, which matters with two CPU cores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from yolodet.cfg.net import NetConfig
from yolodet.errors import SettingError

__all__ = ["AugmentConfig", "DarknetJitter", "RandomHSV", "build_transform", "rand_scale"]

FILL = 127  # uint8 grey, Darknet's 0.5


def rand_scale(s: float) -> float:
    """Darknet's ``rand_scale``: ``uniform(1, s)``, inverted half of the time (torch's global generator)."""
    scale = 1.0 + (max(s, 1.0) - 1.0) * torch.rand(()).item()
    return scale if torch.rand(()).item() < 0.5 else 1.0 / scale


def _uniform(lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand(()).item()


@dataclass(frozen=True)
class AugmentConfig:
    """What the cfg asks for (see :meth:`from_net`); all neutral by default (no augmentation).

    Attributes:
        jitter: Darknet ``jitter`` (max share of each side moved), 0 = plain resize/letterbox.
        hue: max hue shift as a fraction of the colour circle (``hue=.1``).
        saturation, exposure: max scale factors (``1.5``: within [1/1.5, 1.5]); 1 = unchanged.
        flip: random horizontal flip (Darknet's ``flip=1`` default).
        letterbox: keep the aspect ratio (``letter_box=1``), else stretch to the network size as AlexeyAB does.
        mosaic: combine four images (``mosaic=1``).
    """

    jitter: float = 0.0
    hue: float = 0.0
    saturation: float = 1.0
    exposure: float = 1.0
    flip: bool = False
    letterbox: bool = False
    mosaic: bool = False

    @classmethod
    def from_net(cls, net: NetConfig, head_jitter: float, **overrides: Any) -> "AugmentConfig":
        """Take ``[net]``'s ``hue``/``saturation``/``exposure``/``flip``/``letter_box``/``mosaic`` and the heads'
        ``jitter``; ``overrides`` (not None) win."""
        values = dict(jitter=head_jitter, hue=net.hue, saturation=net.saturation, exposure=net.exposure,
                      flip=net.flip, letterbox=net.letter_box, mosaic=net.mosaic)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if not 0 <= values["jitter"] < 0.5:
            raise SettingError(f"jitter must be in [0, 0.5), got {values['jitter']}")
        return cls(**values)


def _find_image(flat_inputs: list[Any]) -> tv_tensors.Image:
    for item in flat_inputs:
        if isinstance(item, tv_tensors.Image):
            return item
    raise TypeError("the sample holds no tv_tensors.Image")


class DarknetJitter(v2.Transform):
    """Random crop/pad window (Darknet's ``jitter``) resized to ``size = (net_w, net_h)``; see module docstring.

    With ``jitter=0`` this is a plain resize (or a letterbox with ``letterbox=True``).
    """

    def __init__(self, size: tuple[int, int], jitter: float = 0.0, *, letterbox: bool = False,
                 fill: int = FILL) -> None:
        super().__init__()
        self.size, self.jitter, self.letterbox, self.fill = (int(size[0]), int(size[1])), jitter, letterbox, fill

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = F.get_size(_find_image(flat_inputs))
        net_w, net_h = self.size
        dw, dh = self.jitter * w, self.jitter * h
        left, right = round(_uniform(-dw, dw)), w - round(_uniform(-dw, dw))
        top, bottom = round(_uniform(-dh, dh)), h - round(_uniform(-dh, dh))
        if self.letterbox:  # widen the window (about its centre) to the network aspect ratio
            cw, ch = right - left, bottom - top
            if cw * net_h > ch * net_w:
                grow = cw * net_h / net_w - ch
                top, bottom = top - math.floor(grow / 2), bottom + math.ceil(grow / 2)
            else:
                grow = ch * net_w / net_h - cw
                left, right = left - math.floor(grow / 2), right + math.ceil(grow / 2)
        sx, sy = net_w / (right - left), net_h / (bottom - top)
        ix0, iy0, ix1, iy1 = max(left, 0), max(top, 0), min(right, w), min(bottom, h)
        dx0 = min(round((ix0 - left) * sx), net_w - 1)
        dy0 = min(round((iy0 - top) * sy), net_h - 1)
        dx1 = min(max(round((ix1 - left) * sx), dx0 + 1), net_w)
        dy1 = min(max(round((iy1 - top) * sy), dy0 + 1), net_h)
        return {"crop": (iy0, ix0, iy1 - iy0, ix1 - ix0), "resize": [dy1 - dy0, dx1 - dx0],
                "pad": [dx0, dy0, net_w - dx1, net_h - dy1]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, (tv_tensors.Image, tv_tensors.BoundingBoxes)):
            return inpt
        out = F.crop(inpt, *params["crop"])
        out = F.resize(out, params["resize"], antialias=False)
        return F.pad(out, params["pad"], fill=self.fill) if any(params["pad"]) else out


class RandomHSV(v2.Transform):
    """Darknet's HSV jitter of a uint8 RGB image (OpenCV HSV: H in [0, 180), wraps; S and V saturate)."""

    def __init__(self, hue: float = 0.0, saturation: float = 1.0, exposure: float = 1.0) -> None:
        super().__init__()
        self.hue, self.saturation, self.exposure = hue, saturation, exposure

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"dhue": _uniform(-self.hue, self.hue), "dsat": rand_scale(self.saturation),
                "dexp": rand_scale(self.exposure)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, tv_tensors.Image):
            return inpt
        if inpt.dtype != torch.uint8 or inpt.shape[-3] != 3:
            raise ValueError(f"RandomHSV needs an RGB uint8 image, got {inpt.dtype} {tuple(inpt.shape)}")
        planes = inpt.as_subclass(torch.Tensor).numpy()
        hsv = cv2.cvtColor(cv2.merge(list(planes)), cv2.COLOR_RGB2HSV)  # merge: CHW -> HWC, 50x a numpy copy
        levels = np.arange(256, dtype=np.float32)
        hue = (np.arange(256) + round(params["dhue"] * 180)) % 180
        luts = (hue, levels * params["dsat"], levels * params["dexp"])
        lut = np.stack([np.clip(t, 0, 255) for t in luts], 1).astype(np.uint8)  # [256, 3]
        hsv = cv2.LUT(hsv, lut[:, None, :])
        out = np.stack(cv2.split(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)))
        return tv_tensors.wrap(torch.from_numpy(out), like=inpt)


def build_transform(size: tuple[int, int], aug: AugmentConfig) -> v2.Compose:
    """The per-image pipeline at network size ``(w, h)``: jitter/resize, HSV, flip, drop boxes under 1 pixel."""
    steps: list[v2.Transform] = [DarknetJitter(size, aug.jitter, letterbox=aug.letterbox)]
    if aug.hue or aug.saturation != 1 or aug.exposure != 1:
        steps.append(RandomHSV(aug.hue, aug.saturation, aug.exposure))
    if aug.flip:
        steps.append(v2.RandomHorizontalFlip(0.5))
    steps.append(v2.SanitizeBoundingBoxes(min_size=1.0))
    return v2.Compose(steps)
