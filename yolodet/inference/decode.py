"""Raw head outputs -> rows, exactly as Darknet's inference path decodes each head type (vectorised).

Rows are ``(cx, cy, w, h, obj, cls_0..cls_C-1)`` with boxes in *network-input pixels*, read by
:func:`yolodet.inference.postprocess.candidates`: a row is a candidate when ``obj > thresh``, and each class whose
``obj * cls`` is above ``thresh`` becomes a detection. ``obj`` and ``cls`` are what Darknet's ``detection`` struct
holds (``objectness`` and ``prob / objectness``), so every head fits that one rule:

- ``[yolo]`` (``yolo_layer.c``), grid W x H, anchor (aw, ah) in input pixels, ``s = scale_x_y``:
  ``new_coords=0``: ``x = (i + sigmoid(tx)*s - (s-1)/2) / W``, ``w = exp(tw) * aw / net_w``; sigmoid on obj, classes.
  ``new_coords=1``: the conv already applied logistic: ``x = (i + tx*s - (s-1)/2) / W``, ``w = tw^2 * 4 * aw /
  net_w``; no further sigmoid.
- ``[Gaussian_yolo]`` (``get_gaussian_yolo_detections``): per anchor ``[mu_x, s_x, mu_y, s_y, mu_w, s_w, mu_h, s_h,
  obj, cls...]``; the box as ``[yolo]`` from the mus; the score is ``obj * cls * (1 - uc)`` with ``uc`` the mean of
  the four sigmoid sigmas, so ``cls`` here is ``sigmoid(cls) * (1 - uc)``.
- ``[region]`` (AlexeyAB's ``custom_get_region_detections`` + ``get_region_boxes``), anchors in grid cells:
  ``x = (i + sigmoid(tx)) / W``, ``w = exp(tw) * aw / W``; ``prob = sigmoid(obj) * cls`` with ``cls`` a softmax
  (``softmax=1``) or the raw conv value (``softmax=0``: Darknet's CPU forward applies no logistic to the classes);
  the detection's objectness is 1, so the rule is ``prob > thresh`` alone: rows carry ``obj = 1, cls = prob``.
- ``[detection]`` (YOLOv1, ``get_detection_detections``), flat ``[classes of every cell | confidence of every box
  | 4 coords of every box]``: ``x = (tx + col) / side``, ``w = tw^2`` (``sqrt=1``) or ``tw``, ``prob = conf * cls``
  (``cls`` softmaxed when ``softmax=1``, else raw); no objectness threshold: rows carry ``obj = 1, cls = prob``.

Boxes come out in network-input pixels (the fractions above times net_w / net_h).

Warning: with ``letter_box=1`` Darknet scales ``[detection]`` boxes straight to the image (``get_detection_detections``
ignores the letterbox); yolodet maps them back through the letterbox as for every other head.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch

from yolodet.errors import YolodetError

from yolodet.modeling.blocks.yolo import HeadSpec, common_class_count
from yolodet.modeling.blocks.yolov1 import DetectionSpec
from yolodet.modeling.blocks.yolov2 import RegionSpec

HEAD_KINDS = ("yolo", "gaussian_yolo", "region", "detection")


class DecodeError(YolodetError, ValueError):
    """A model whose heads this decoder cannot read."""


def check_decodable(head) -> None:
    """Raise :class:`DecodeError` for a head Darknet's detector decodes in a way yolodet does not reproduce."""
    kind = getattr(head, "kind", "yolo")
    if kind not in HEAD_KINDS:
        raise DecodeError(f"layer {head.layer}: [{kind}] heads do not decode; known: {', '.join(HEAD_KINDS)}")
    if kind in ("region", "detection") and head.coords != 4:
        raise DecodeError(f"layer {head.layer}: [{kind}] with coords={head.coords}: Darknet's detector reads its "
                          "boxes as if coords=4 (it strides by classes + 5), so only coords=4 decodes")
    if kind == "region" and head.tree:
        if not os.path.isfile(head.tree):
            raise DecodeError(f"layer {head.layer}: [region] tree={head.tree}: the file is not found (Darknet reads "
                              f"it relative to the current folder, {os.getcwd()})")
        raise DecodeError(f"layer {head.layer}: [region] with tree={head.tree} (softmax_tree, YOLO9000's "
                          "hierarchical classes) does not decode in yolodet")


class YoloDecoder:
    """Decodes every head at once; grid and anchor tensors are cached per (head, grid size, device, dtype).

    Call: ``decoder(outputs, (net_w, net_h))`` with ``outputs[i]`` the raw head output ([B, A_i*(5+C), H_i, W_i]
    for ``[yolo]``/``[region]``, [B, A_i*(9+C), H_i, W_i] for ``[Gaussian_yolo]``, [B, side^2*(C + A_i*5), 1, 1]
    for ``[detection]``) -> [B, N, 5+C] rows ``(cx, cy, w, h, obj, cls_0..cls_C-1)`` (see the module docstring),
    N = sum A_i*H_i*W_i, in head, anchor, row, column order (``[detection]``: cell, then box). Inputs are never
    modified.
    """

    def __init__(self, heads: Sequence[HeadSpec | RegionSpec | DetectionSpec]) -> None:
        for head in heads:
            check_decodable(head)
        self.num_classes = common_class_count(heads, "decode")
        self.heads = list(heads)
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def _grid(self, k: int, h: int, w: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[1, 1, H, W, 2] cell offsets (i, j) and [1, A, 1, 1, 2] anchors (None for ``[detection]``), cached."""
        key = (k, h, w, like.device, like.dtype)
        if key not in self._cache:
            ys, xs = torch.meshgrid(torch.arange(h, device=like.device), torch.arange(w, device=like.device),
                                    indexing="ij")
            grid = torch.stack((xs, ys), -1).to(like.dtype)[None, None]
            head = self.heads[k]
            anchors = None if head.kind == "detection" else \
                head.anchor_tensor().to(like.device, like.dtype)[None, :, None, None]
            self._cache[key] = (grid, anchors)
        return self._cache[key]

    def decode_head(self, k: int, out: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
        """One head: raw output -> [B, A*H*W, 5+C]."""
        head = self.heads[k]
        h, w = (head.side, head.side) if head.kind == "detection" else (out.shape[2], out.shape[3])
        grid, anchors = self._grid(k, h, w, out)
        scale = torch.tensor([input_size[0] / w, input_size[1] / h], device=out.device, dtype=out.dtype)
        if head.kind == "region":
            return region_rows(head, out, grid, anchors, scale)
        if head.kind == "detection":
            return detection_rows(head, out, grid, scale)
        if head.kind == "gaussian_yolo":
            return gaussian_rows(head, out, grid, anchors, scale)
        return decode_rows(head, out, grid, anchors, scale)

    def __call__(self, outputs: Sequence[torch.Tensor], input_size: tuple[int, int]) -> torch.Tensor:
        if len(outputs) != len(self.heads):
            raise ValueError(f"{len(outputs)} outputs for {len(self.heads)} heads")
        return torch.cat([self.decode_head(k, out, input_size) for k, out in enumerate(outputs)], 1)


def _xy(t: torch.Tensor, s: float, grid: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Box centres in input pixels from logistic offsets ``t`` [..., 2] and ``scale_x_y = s``."""
    if s != 1:
        t = t * s - (s - 1) / 2
    return (t + grid) * scale


def decode_rows(spec: HeadSpec, out: torch.Tensor, grid: torch.Tensor, anchors: torch.Tensor,
                scale: torch.Tensor) -> torch.Tensor:
    """Darknet's box formula for one ``[yolo]`` head: raw [B, A*(5+C), H, W] -> rows [B, A*H*W, 5+C] of
    (cx, cy, w, h) in input pixels, objectness and class probabilities.

    ``grid`` [1, 1, H, W, 2] cell offsets, ``anchors`` [1, A, 1, 1, 2] in input pixels and ``scale`` [2] (input
    pixels per cell, x and y) come from the caller, so that :class:`YoloDecoder` can cache them and the ONNX
    end-to-end graph (:mod:`yolodet.export.end2end`) can build them from traced shapes.
    """
    b, _, h, w = out.shape
    p = out.view(b, spec.num_anchors, 5 + spec.classes, h, w).permute(0, 1, 3, 4, 2)
    if spec.new_coords:
        xy, wh, rest = p[..., :2], p[..., 2:4].square() * 4, p[..., 4:]
    else:
        xy, wh, rest = p[..., :2].sigmoid(), p[..., 2:4].exp(), p[..., 4:].sigmoid()
    xy = _xy(xy, spec.scale_x_y, grid, scale)
    return torch.cat((xy, wh * anchors, rest), -1).reshape(b, -1, 5 + spec.classes)


def gaussian_rows(spec: HeadSpec, out: torch.Tensor, grid: torch.Tensor, anchors: torch.Tensor,
                  scale: torch.Tensor) -> torch.Tensor:
    """One ``[Gaussian_yolo]`` head: raw [B, A*(9+C), H, W] -> rows [B, A*H*W, 5+C]; ``cls`` is
    ``sigmoid(cls) * (1 - uc)`` (module docstring). Arguments as :func:`decode_rows`."""
    b, _, h, w = out.shape
    p = out.view(b, spec.num_anchors, 9 + spec.classes, h, w).permute(0, 1, 3, 4, 2)
    xy = _xy(p[..., 0:4:2].sigmoid(), spec.scale_x_y, grid, scale)
    wh = p[..., 4:8:2].exp() * anchors
    uc = p[..., 1:8:2].sigmoid().mean(-1, keepdim=True)
    obj, cls = p[..., 8:9].sigmoid(), p[..., 9:].sigmoid()
    return torch.cat((xy, wh, obj, cls * (1 - uc)), -1).reshape(b, -1, 5 + spec.classes)


def region_rows(spec: RegionSpec, out: torch.Tensor, grid: torch.Tensor, anchors: torch.Tensor,
                scale: torch.Tensor) -> torch.Tensor:
    """One ``[region]`` head: raw [B, A*(5+C), H, W] -> rows [B, A*H*W, 5+C] with ``obj = 1`` and ``cls = prob``
    (module docstring). ``anchors`` [1, A, 1, 1, 2] in grid cells; the rest as :func:`decode_rows`."""
    b, _, h, w = out.shape
    p = out.view(b, spec.num_anchors, 5 + spec.classes, h, w).permute(0, 1, 3, 4, 2)
    xy = (p[..., :2].sigmoid() + grid) * scale
    wh = p[..., 2:4].exp() * anchors * scale
    cls = p[..., 5:].softmax(-1) if spec.softmax else p[..., 5:]
    prob = p[..., 4:5].sigmoid() * cls
    return torch.cat((xy, wh, torch.ones_like(xy[..., :1]), prob), -1).reshape(b, -1, 5 + spec.classes)


def detection_rows(spec: DetectionSpec, out: torch.Tensor, grid: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """One ``[detection]`` head: raw [B, side^2*(C + A*5), 1, 1] -> rows [B, side^2*A, 5+C] in cell, box order,
    with ``obj = 1`` and ``cls = prob`` (module docstring). ``grid`` [1, 1, side, side, 2], ``scale`` [2] input
    pixels per cell."""
    b, s, c, n = out.shape[0], spec.side, spec.classes, spec.num
    flat = out.reshape(b, -1)
    cells = s * s
    cls = flat[:, :cells * c].view(b, cells, 1, c)
    if spec.softmax:
        cls = cls.softmax(-1)
    conf = flat[:, cells * c:cells * (c + n)].view(b, cells, n, 1)
    box = flat[:, cells * (c + n):].view(b, cells, n, 4)
    xy = (box[..., :2] + grid.reshape(1, cells, 1, 2)) * scale
    wh = (box[..., 2:].square() if spec.sqrt else box[..., 2:]) * scale * s
    prob = conf * cls
    return torch.cat((xy, wh, torch.ones_like(conf), prob), -1).reshape(b, -1, 5 + c)
