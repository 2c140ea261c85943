"""What ``detect`` reads: image files, folders, globs, video files, camera indices and network streams.

``expand_sources`` turns what a user typed into :class:`MediaInput` items. Frames come from
:func:`iter_video_frames` (video files: every frame, in order) or :class:`LiveCapture` (cameras and RTSP / RTMP /
HTTP(S) streams: a reader thread keeps only the newest frame, so a slow network never builds a queue and memory
stays bounded; frames that arrive while the network is busy are dropped and counted).
"""

from __future__ import annotations

import glob
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from yolodet.errors import YolodetError

log = logging.getLogger(__name__)

__all__ = ["IMAGE_EXTS", "SAMPLE_IMAGE", "VIDEO_EXTS", "LiveCapture", "MediaInput", "SourceError", "expand_sources",
           "iter_video_frames"]

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
VIDEO_EXTS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv"})
SAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "assets" / "zebras.jpg"
"""The bundled sample image (package data), the default source of ``yolodet detect``."""

_STREAM = re.compile(r"^(rtsp|rtsps|rtmp|http|https|udp|tcp|srt)://", re.IGNORECASE)
OPEN_TIMEOUT_MS = 10_000
"""How long opening a stream may take before it counts as unreachable (OpenCV's FFmpeg backend)."""
READ_TIMEOUT_MS = 10_000
"""A stream that delivers no frame for this long has ended."""


class SourceError(YolodetError, ValueError):
    """A camera or stream that cannot be opened."""


@dataclass(frozen=True)
class MediaInput:
    """One input: ``kind`` is ``image`` or ``video`` (``path`` set), ``camera`` or ``stream`` (``uri`` set)."""

    path: Path | None
    kind: str
    uri: str = ""

    @property
    def name(self) -> str:
        """What the user wrote: the file path, the camera index or the URL."""
        return self.uri or str(self.path)

    @property
    def live(self) -> bool:
        return self.kind in ("camera", "stream")

    @property
    def stem(self) -> str:
        """A file-name stem for this input's outputs."""
        if self.path is not None:
            return self.path.stem
        if self.kind == "camera":
            return f"camera{self.uri}"
        return re.sub(r"[^A-Za-z0-9._-]+", "_", _STREAM.sub("", self.uri)).strip("_")[:80] or "stream"


def expand_sources(sources: list[str]) -> tuple[list[MediaInput], list[str]]:
    """Image files, video files, folders (their images and videos, sorted), globs, camera indices (``0``) and
    stream URLs -> inputs.

    Returns (inputs, problems): each problem is a message for a source that matched nothing usable. A file given
    explicitly is kept whatever its extension (an unreadable one is reported when it is read). A number that is
    not an existing file is a camera index.
    """
    inputs: list[MediaInput] = []
    problems: list[str] = []
    for source in sources:
        p = Path(source)
        if _STREAM.match(source):
            inputs.append(MediaInput(None, "stream", source))
            continue
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS | VIDEO_EXTS)
            if not found:
                problems.append(f"{source}: folder has no images or videos")
        elif p.is_file():
            found = [p]
        elif source.isdigit():
            inputs.append(MediaInput(None, "camera", source))
            continue
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


def iter_video_frames(path: Path, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """RGB uint8 frames of a video file, in order (nothing when OpenCV cannot open it)."""
    cap = cv2.VideoCapture(str(path))
    try:
        count = 0
        while max_frames is None or count < max_frames:
            ok, frame = cap.read()
            if not ok:
                return
            count += 1
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()


def video_fps(path: Path) -> float:
    """The frame rate a video file declares (25 when it declares none)."""
    cap = cv2.VideoCapture(str(path))
    try:
        return cap.get(cv2.CAP_PROP_FPS) or 25.0
    finally:
        cap.release()


class LiveCapture:
    """A camera or network stream read by a background thread that keeps only the newest frame.

    Iterating yields RGB ``uint8[H, W, 3]`` frames as fast as the consumer takes them; frames that arrived in
    between are dropped (:attr:`dropped`). Iteration ends when the stream ends or dies (:attr:`error` says why)
    or after ``max_frames``; :meth:`close` (or leaving a ``with`` block) stops the thread.

    Raises:
        SourceError: on construction, when the camera or stream cannot be opened.
    """

    def __init__(self, item: MediaInput, *, max_frames: int | None = None) -> None:
        self.item, self.max_frames = item, max_frames
        self.dropped, self.error = 0, None
        self._cap = _open_capture(item)
        self.fps = self._cap.get(cv2.CAP_PROP_FPS) or 25.0
        self._frame: np.ndarray | None = None
        self._done = False
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name=f"yolodet-capture-{item.stem}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while not self._stop.is_set():
                ok, frame = self._cap.read()
                with self._cond:
                    if not ok:
                        break
                    if self._frame is not None:
                        self.dropped += 1
                    self._frame = frame
                    self._cond.notify()
        except cv2.error as exc:  # pragma: no cover - backend-specific failures mid-stream
            self.error = f"OpenCV error: {exc}"
        finally:
            with self._cond:
                self._done = True
                self._cond.notify()

    def __iter__(self) -> Iterator[np.ndarray]:
        count = 0
        while self.max_frames is None or count < self.max_frames:
            with self._cond:
                while self._frame is None and not self._done:
                    self._cond.wait(0.1)
                frame, self._frame = self._frame, None
            if frame is None:
                return
            count += 1
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=READ_TIMEOUT_MS / 1000 + 1)
        self._cap.release()

    def __enter__(self) -> "LiveCapture":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_capture(item: MediaInput) -> cv2.VideoCapture:
    """Open a camera index or a stream URL, with timeouts, or raise :class:`SourceError`."""
    if item.kind == "camera":
        cap = cv2.VideoCapture(int(item.uri))
        what = f"camera {item.uri}"
    else:
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, READ_TIMEOUT_MS]
        cap = cv2.VideoCapture(item.uri, cv2.CAP_FFMPEG, params)
        what = f"stream {item.uri}"
    if not cap.isOpened():
        cap.release()
        hint = "no such camera on this machine" if item.kind == "camera" else \
            f"unreachable, refused or not a video within {OPEN_TIMEOUT_MS // 1000} s"
        raise SourceError(f"cannot open {what}: {hint}")
    return cap
