"""Raw head outputs -> boxes, exactly as Darknet's ``yolo_layer.c`` decodes them (all heads, vectorised).

For a head with grid W x H, anchor (aw, ah) in input pixels and scale ``s = scale_x_y``:

- ``new_coords=0``: ``x = (i + sigmoid(tx)*s - (s-1)/2) / W``, ``w = exp(tw) * aw / net_w``; sigmoid on obj, classes.
- ``new_coords=1``: the conv already applied logistic: ``x = (i + tx*s - (s-1)/2) / W``, ``w = tw^2 * 4 * aw / net_w``;
  no further sigmoid.

Boxes come out in *network-input pixels* (the fractions above times net_w / net_h).
"""

from __future__ import annotations

from typing import Sequence

import torch

from yolodet.errors import YolodetError

from yolodet.modeling.blocks.yolo import HeadSpec, common_class_count


class DecodeError(YolodetError, ValueError):
    """A model whose heads this decoder cannot read."""


class YoloDecoder:
    """Decodes every head at once; grid and anchor tensors are cached per (grid size, device, dtype).

    Call: ``decoder(outputs, (net_w, net_h))`` with ``outputs[i]``: [B, A_i*(5+C), H_i, W_i] ->
    [B, N, 5+C] rows ``(cx, cy, w, h, obj, cls_0..cls_C-1)``, N = sum A_i*H_i*W_i, in head, anchor, row, column
    order. Inputs are never modified.
    """

    def __init__(self, heads: Sequence[HeadSpec]) -> None:
        kinds = sorted({getattr(h, "kind", "yolo") for h in heads} - {"yolo"})
        if kinds:
            raise DecodeError(f"decoding {', '.join(f'[{k}]' for k in kinds)} heads is not implemented yet (the "
                              "model computes their raw outputs exactly as Darknet; only [yolo] heads decode)")
        self.num_classes = common_class_count(heads, "decode")
        self.heads = list(heads)
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _grid(self, k: int, h: int, w: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[1, 1, H, W, 2] cell offsets (i, j) and [1, A, 1, 1, 2] anchors, cached."""
        key = (k, h, w, like.device, like.dtype)
        if key not in self._cache:
            ys, xs = torch.meshgrid(torch.arange(h, device=like.device), torch.arange(w, device=like.device),
                                    indexing="ij")
            grid = torch.stack((xs, ys), -1).to(like.dtype)[None, None]
            anchors = self.heads[k].anchor_tensor().to(like.device, like.dtype)[None, :, None, None]
            self._cache[key] = (grid, anchors)
        return self._cache[key]

    def decode_head(self, k: int, out: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
        """One head: [B, A*(5+C), H, W] -> [B, A*H*W, 5+C]."""
        h, w = out.shape[2], out.shape[3]
        grid, anchors = self._grid(k, h, w, out)
        scale = torch.tensor([input_size[0] / w, input_size[1] / h], device=out.device, dtype=out.dtype)
        return decode_rows(self.heads[k], out, grid, anchors, scale)

    def __call__(self, outputs: Sequence[torch.Tensor], input_size: tuple[int, int]) -> torch.Tensor:
        if len(outputs) != len(self.heads):
            raise ValueError(f"{len(outputs)} outputs for {len(self.heads)} heads")
        return torch.cat([self.decode_head(k, out, input_size) for k, out in enumerate(outputs)], 1)


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
    s = spec.scale_x_y
    if spec.new_coords:
        xy, wh, rest = p[..., :2], p[..., 2:4].square() * 4, p[..., 4:]
    else:
        xy, wh, rest = p[..., :2].sigmoid(), p[..., 2:4].exp(), p[..., 4:].sigmoid()
    if s != 1:
        xy = xy * s - (s - 1) / 2
    xy = (xy + grid) * scale
    return torch.cat((xy, wh * anchors, rest), -1).reshape(b, -1, 5 + spec.classes)
