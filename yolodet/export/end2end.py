"""The end-to-end graph: network, decode, Darknet's candidate rule and per-class NMS in one ONNX model.

Outputs, fixed-size and padded (the layout TensorRT's and ONNX Runtime's users expect), for ``K = max_det``:

- ``boxes``  float32 [B, K, 4]: xyxy in *network-input* pixels (map them to the original image with the
  preprocessing's :class:`~yolodet.inference.preprocess.Mapping`); rows ``>= num`` are 0;
- ``scores`` float32 [B, K]: ``obj * cls``, descending; rows ``>= num`` are 0;
- ``labels`` int32 [B, K]: class indices; rows ``>= num`` are -1;
- ``num``    int32 [B]: detections per image (``<= K``).

It computes what :class:`~yolodet.inference.detector.Detector` computes: decode as
:class:`~yolodet.inference.decode.YoloDecoder` (same float32 operations), a (box, class) pair is a candidate when
``obj > conf_thres`` and ``obj * cls > conf_thres`` (multi-label), per-class NMS at IoU ``nms_thres`` on the
unclipped boxes (ONNX ``NonMaxSuppression`` with scores [B, C, N]: one NMS per image and class), then the ``K``
best of all classes. ONNX's NMS orders exactly tied scores by box index where torchvision's sort does not promise
an order, so among tied boxes that overlap a different one may survive.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms

from yolodet.inference.boxes import cxcywh_to_xyxy
from yolodet.inference.decode import decode_rows
from yolodet.modeling.model import Darknet

__all__ = ["END2END_OUTPUTS", "End2End"]

END2END_OUTPUTS = ("boxes", "scores", "labels", "num")


class _NonMaxSuppression(torch.autograd.Function):
    """ONNX ``NonMaxSuppression``: boxes [B, N, 4] xyxy, scores [B, C, N] -> selected [M, 3] (batch, class, box).

    The tracer writes the ONNX op (``symbolic``); ``forward`` computes the same selection with torchvision's NMS
    so that the traced module also runs in torch.
    """

    @staticmethod
    def forward(ctx, boxes: torch.Tensor, scores: torch.Tensor, max_per_class: int, iou: float,
                score_thres: float) -> torch.Tensor:  # noqa: D102
        selected = []
        for b in range(scores.shape[0]):
            cls, idx = (scores[b] > score_thres).nonzero(as_tuple=True)
            keep = batched_nms(boxes[b, idx].float(), scores[b, cls, idx].float(), cls, iou)
            cls, idx = cls[keep], idx[keep]
            for c in cls.unique():
                mine = idx[cls == c][:max_per_class]
                selected.append(torch.stack([torch.full_like(mine, b), torch.full_like(mine, c), mine], 1))
        return torch.cat(selected) if selected else torch.zeros(0, 3, dtype=torch.int64)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class: int, iou: float, score_thres: float):  # noqa: D102
        return g.op("NonMaxSuppression", boxes, scores,
                    g.op("Constant", value_t=torch.tensor([max_per_class], dtype=torch.int64)),
                    g.op("Constant", value_t=torch.tensor([iou], dtype=torch.float32)),
                    g.op("Constant", value_t=torch.tensor([score_thres], dtype=torch.float32)),
                    center_point_box_i=0)


class End2End(nn.Module):
    """``x`` [B, C, H, W] in [0, 1] -> ``(boxes, scores, labels, num)`` (module docstring).

    Args:
        model: a :class:`Darknet` with ``[yolo]`` heads (used as is: pass an export copy).
        conf_thres, nms_thres: Darknet's candidate threshold and per-class NMS IoU.
        max_det: K, the detections kept per image (the output size).
    """

    def __init__(self, model: Darknet, *, conf_thres: float, nms_thres: float, max_det: int) -> None:
        super().__init__()
        self.model = model
        self.heads = list(model.heads)
        self.num_classes = model.num_classes
        self.conf_thres, self.nms_thres, self.max_det = float(conf_thres), float(nms_thres), int(max_det)
        for k, head in enumerate(self.heads):
            self.register_buffer(f"anchors{k}", head.anchor_tensor()[None, :, None, None], persistent=False)

    def _decode(self, k: int, out: torch.Tensor, in_w: int, in_h: int) -> torch.Tensor:
        """One head [B, A*(5+C), H, W] -> [B, A*H*W, 5+C] rows (cx, cy, w, h, obj, cls...), as YoloDecoder."""
        h, w = out.shape[2], out.shape[3]
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")  # from traced shapes: no cache
        grid = torch.stack((xs, ys), -1).to(out.dtype)[None, None]
        scale = torch.stack((torch.as_tensor(in_w / w), torch.as_tensor(in_h / h))).to(out.dtype)
        return decode_rows(self.heads[k], out, grid, getattr(self, f"anchors{k}"), scale)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        in_h, in_w = x.shape[2], x.shape[3]
        pred = torch.cat([self._decode(k, o.float(), in_w, in_h) for k, o in enumerate(self.model(x))], 1)
        boxes = cxcywh_to_xyxy(pred[..., :4])                                       # [B, N, 4]
        obj = pred[..., 4:5]
        scores = torch.where(obj > self.conf_thres, obj * pred[..., 5:], torch.zeros_like(obj))
        scores = scores.transpose(1, 2).contiguous()                                # [B, C, N]
        k = self.max_det
        selected = _NonMaxSuppression.apply(boxes, scores, k, self.nms_thres, self.conf_thres)
        b_i, c_i, n_i = selected[:, 0], selected[:, 1], selected[:, 2]
        batch, classes, n = scores.shape
        flat = scores.reshape(-1)
        where = (b_i * classes + c_i) * n + n_i
        table = torch.full_like(flat, -1.0).scatter(0, where, flat[where]).view(batch, classes * n)
        top, index = F.pad(table, (0, k), value=-1.0).topk(k, dim=1)                # padding: K always fits
        valid = top >= 0
        labels = torch.div(index, n, rounding_mode="floor")
        box_index = (index - labels * n).clamp(max=n - 1)
        picked = torch.gather(boxes, 1, box_index.unsqueeze(-1).expand(-1, -1, 4))
        return (torch.where(valid.unsqueeze(-1), picked, torch.zeros_like(picked)),
                torch.where(valid, top, torch.zeros_like(top)),
                torch.where(valid, labels, torch.full_like(labels, -1)).to(torch.int32),
                valid.sum(1).to(torch.int32))
