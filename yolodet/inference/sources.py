"""Finding inputs (image files, folders, globs, videos) and writing outputs atomically."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from yolodet.atomic import atomic_write_bytes

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
VIDEO_EXTS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv"})
SAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "assets" / "zebras.jpg"
"""The bundled sample image (package data), the default source of ``yolodet detect``."""


@dataclass(frozen=True)
class MediaInput:
    path: Path
    kind: str  # "image" or "video"


def expand_sources(sources: list[str]) -> tuple[list[MediaInput], list[str]]:
    """Image files, video files, folders (their images and videos, sorted) and globs -> inputs.

    Returns (inputs, problems): each problem is a message for a source that matched nothing usable. A file given
    explicitly is kept whatever its extension (an unreadable one is reported when it is read).
    """
    inputs: list[MediaInput] = []
    problems: list[str] = []
    for source in sources:
        p = Path(source)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS | VIDEO_EXTS)
            if not found:
                problems.append(f"{source}: folder has no images or videos")
        elif p.is_file():
            found = [p]
        elif glob.has_magic(source):
            found = sorted(Path(f) for f in glob.glob(source, recursive=True)
                           if Path(f).suffix.lower() in IMAGE_EXTS | VIDEO_EXTS)
            if not found:
                problems.append(f"{source}: pattern matches no images or videos")
        else:
            found = []
            problems.append(f"{source}: no such file or folder")
        inputs.extend(MediaInput(f, "video" if f.suffix.lower() in VIDEO_EXTS else "image") for f in found)
    return inputs, problems


def iter_video_frames(path: Path) -> Iterator[np.ndarray]:
    """RGB uint8 frames of a video file (nothing when OpenCV cannot open it)."""
    cap = cv2.VideoCapture(str(path))
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()


def write_image(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Encode an RGB image by the file's extension and write it atomically."""
    ok, buf = cv2.imencode(Path(path).suffix or ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"{path}: OpenCV cannot encode this image format")
    atomic_write_bytes(path, buf.tobytes())
