"""Drawing detections on an image (returns a new image; the input is not modified)."""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from yolodet.inference.postprocess import Detections


def class_color(label: int) -> tuple[int, int, int]:
    """A stable, distinct RGB colour per class (golden-ratio hue walk)."""
    hue = int((label * 0.618033988749895 % 1.0) * 180)
    hsv = np.uint8([[[hue, 200, 255]]])
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


def draw_detections(image: np.ndarray, det: Detections, names: Sequence[str]) -> np.ndarray:
    """RGB uint8 [H, W, 3] + detections (original pixels) -> annotated copy with boxes, names and scores."""
    out = np.ascontiguousarray(image).copy()
    thick = max(1, round(max(out.shape[:2]) / 400))
    scale = max(0.4, max(out.shape[:2]) / 1200)
    for box, score, label in sorted(zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist()),
                                    key=lambda t: t[1]):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        color = class_color(label)
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thick, cv2.LINE_AA)
        text = f"{names[label]} {score:.0%}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, max(1, thick - 1))
        ty = y1 - 2 if y1 - th - base - 2 >= 0 else y1 + th + base + 2
        cv2.rectangle(out, (x1, ty - th - base), (x1 + tw + 2, ty + 2), color, -1)
        cv2.putText(out, text, (x1 + 1, ty - base + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0),
                    max(1, thick - 1), cv2.LINE_AA)
    return out
