"""Writing :class:`~yolodet.inference.predict.Frame` results in standard formats, every file atomically:

- ``detections.json``: per image/frame the file (or camera/URL), frame number, size and each detection's
  ``class_id``, ``name``, ``score`` and ``box_xyxy`` in original pixels; plus the settings used and the inputs that
  failed (:meth:`DetectionWriter.close`);
- annotated images (``<stem>.jpg``/``.png``) and videos (``<stem>.mp4``, one per video, camera or stream; written
  to a temporary file and renamed when the source ends, so an interrupted or dead stream keeps what it showed);
- Darknet label files ``labels/<stem>.txt`` (``class cx cy w h`` normalised, as ``darknet detector test
  -save_labels``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from yolodet.atomic import atomic_write_bytes
from yolodet.inference.draw import draw_detections
from yolodet.inference.postprocess import Detections
from yolodet.inference.predict import Frame

__all__ = ["DetectionWriter", "darknet_txt", "detections_json", "write_image"]


def detections_json(det: Detections, names: Sequence[str]) -> list[dict]:
    """One image's detections as JSON-ready dicts (scores to 6 decimals, boxes to 0.01 pixel)."""
    return [{"class_id": int(l), "name": names[l], "score": round(float(s), 6),
             "box_xyxy": [round(float(v), 2) for v in b]}
            for b, s, l in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist())]


def darknet_txt(det: Detections, width: int, height: int) -> str:
    """Darknet's ``-save_labels`` format: ``class cx cy w h`` normalised, one line per detection."""
    lines = []
    for (x1, y1, x2, y2), label in zip(det.boxes.tolist(), det.labels.tolist()):
        lines.append(f"{label} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
                     f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}")
    return "\n".join(lines) + ("\n" if lines else "")


def write_image(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Encode an RGB image by the file's extension and write it atomically."""
    ok, buf = cv2.imencode(Path(path).suffix or ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"{path}: OpenCV cannot encode this image format")
    atomic_write_bytes(path, buf.tobytes())


class DetectionWriter:
    """Collects frames and writes them under ``out`` (see the module docstring).

    Args:
        out: the output folder (created on the first write).
        names: class names (index -> name).
        save_images: write annotated images and videos.
        save_txt: write Darknet label files.
    """

    def __init__(self, out: str | os.PathLike, names: Sequence[str], *, save_images: bool = True,
                 save_txt: bool = False) -> None:
        self.out, self.names = Path(out), list(names)
        self.save_images, self.save_txt = save_images, save_txt
        self.records: list[dict[str, Any]] = []
        self.failed: list[dict[str, str]] = []
        self._videos: dict[str, tuple[cv2.VideoWriter, Path, Path]] = {}

    def add(self, frame: Frame, fps: float = 25.0) -> None:
        """Record one result (or failure) and write its files; ``fps``: the frame rate of its annotated video."""
        if frame.error is not None:
            self.failed.append({"file": frame.source, "error": frame.error})
            return
        det, (w, h), item = frame.detections, frame.size, frame.input
        stem = item.stem if frame.index is None else f"{item.stem}_{frame.index:06d}"
        self.records.append({"file": frame.source, "frame": frame.index, "width": w, "height": h,
                             "detections": detections_json(det, self.names)})
        if self.save_txt:
            atomic_write_bytes(self.out / "labels" / f"{stem}.txt", darknet_txt(det, w, h).encode())
        if not self.save_images or frame.image is None:
            return
        drawn = draw_detections(frame.image, det, self.names)
        if frame.index is None:
            suffix = item.path.suffix.lower() if item.path is not None else ".jpg"
            write_image(self.out / f"{item.stem}{suffix if suffix in ('.jpg', '.png') else '.jpg'}", drawn)
        else:
            self._video(frame.source, item.stem, fps, (w, h)).write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))

    def _video(self, key: str, stem: str, fps: float, size: tuple[int, int]) -> cv2.VideoWriter:
        if key not in self._videos:
            self.out.mkdir(parents=True, exist_ok=True)
            tmp, final = self.out / f".{stem}.tmp.mp4", self.out / f"{stem}.mp4"
            self._videos[key] = (cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, size), tmp, final)
        return self._videos[key][0]

    def finish_video(self, key: str) -> Path | None:
        """Close the annotated video of source ``key`` and move it into place (None if it had no frames)."""
        entry = self._videos.pop(key, None)
        if entry is None:
            return None
        writer, tmp, final = entry
        writer.release()
        tmp.replace(final)
        return final

    def close(self, settings: dict[str, Any], *, write_json: bool = True) -> Path:
        """Finish every video and write ``detections.json`` (with ``settings`` as its ``model`` entry) unless
        ``write_json`` is False (a rank of a sharded run that is not the one writing it)."""
        for key in list(self._videos):
            self.finish_video(key)
        path = self.out / "detections.json"
        if not write_json:
            return path
        atomic_write_bytes(path, json.dumps({"model": settings, "images": self.records, "failed": self.failed},
                                            indent=1).encode())
        return path
