"""Darknet ``.weights`` files: header, full and partial loading, saving, with exact byte accounting.

Layout: int32 ``major, minor, revision``, then ``seen`` (uint64 when ``major*10 + minor >= 2``, else uint32), then
float32 little-endian tensors, layer by layer in cfg order, in the order each block's ``darknet_tensors`` gives
(convolutional with BN: ``beta, gamma, mean, var, weights``; without BN: ``bias, weights``).

Partial files (``darknet partial``, e.g. ``darknet53.conv.74``) stop at a layer boundary and fill the first layers
only. A file that ends *inside* a layer, or has bytes left after the last layer, is reported as an error with the
counts: a silently half-loaded network is worse than no network.
"""

from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from yolodet.atomic import atomic_writer
from yolodet.errors import YolodetError

log = logging.getLogger(__name__)

_HEADER_INTS = struct.Struct("<3i")


class WeightsError(YolodetError, ValueError):
    """A ``.weights`` file that does not fit the cfg (message names the file, layer and counts)."""


@dataclass(frozen=True)
class WeightsHeader:
    major: int = 0
    minor: int = 2
    revision: int = 5
    seen: int = 0

    @property
    def wide_seen(self) -> bool:
        """``seen`` is a uint64 for version >= 0.2 (and uint32 before)."""
        return self.major * 10 + self.minor >= 2

    @property
    def transposed(self) -> bool:
        """Darknet stores ``[connected]`` weights transposed in files with a version part > 1000."""
        return self.major > 1000 or self.minor > 1000

    @property
    def nbytes(self) -> int:
        return _HEADER_INTS.size + (8 if self.wide_seen else 4)

    def to_bytes(self) -> bytes:
        seen = struct.pack("<Q" if self.wide_seen else "<I", self.seen)
        return _HEADER_INTS.pack(self.major, self.minor, self.revision) + seen


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_darknet_weights` filled.

    Attributes:
        layers_filled: Darknet ``N`` (layers 0..N-1 are covered), as in ``darknet partial ... N``.
        weighted_filled / weighted_total: layers that carry weights, filled and in the model.
    """

    path: str
    header: WeightsHeader
    layers_filled: int
    weighted_filled: int
    weighted_total: int
    unfilled: tuple[int, ...] = ()
    """Darknet indices of the layers with weights the file did not reach (they keep their initial values)."""

    @property
    def complete(self) -> bool:
        return self.weighted_filled == self.weighted_total


def read_header(data: bytes, path: str = "<weights>") -> WeightsHeader:
    """Parse the header at the start of ``data``."""
    if len(data) < _HEADER_INTS.size + 4:
        raise WeightsError(f"{path}: {len(data)} bytes is too short for a Darknet weights header")
    major, minor, revision = _HEADER_INTS.unpack_from(data)
    wide = major * 10 + minor >= 2
    if wide and len(data) < _HEADER_INTS.size + 8:
        raise WeightsError(f"{path}: {len(data)} bytes is too short for a version {major}.{minor} header")
    (seen,) = struct.unpack_from("<Q" if wide else "<I", data, _HEADER_INTS.size)
    return WeightsHeader(major, minor, revision, seen)


def _weighted_layers(model: nn.Module) -> list[tuple[int, nn.Module, list[torch.Tensor]]]:
    return [(i, layer, tensors) for i, layer in enumerate(model.layers)
            if (tensors := layer.darknet_tensors())]


def load_darknet_weights(model: nn.Module, path: str | os.PathLike) -> LoadReport:
    """Copy a ``.weights`` file into ``model`` (a :class:`yolodet.model.Darknet`), in place.

    Raises:
        WeightsError: unreadable file, a file ending inside a layer, bytes left after the last layer, or NaN/Inf
            values (naming the layer).
    """
    path = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read weights: {exc.strerror or exc}") from None
    header = read_header(data, path)
    body = len(data) - header.nbytes
    if body % 4:
        raise WeightsError(f"{path}: {body} bytes after the header is not a whole number of float32 values")
    floats = np.frombuffer(data, dtype="<f4", offset=header.nbytes)
    layers = _weighted_layers(model)
    offset, filled, last = 0, 0, -1
    with torch.no_grad():
        for index, layer, tensors in layers:
            if offset == len(floats):
                break
            need = sum(t.numel() for t in tensors)
            if offset + need > len(floats):
                raise WeightsError(
                    f"{path}: file ends inside layer {index} ({type(layer).__name__}): it needs {need} floats but "
                    f"only {len(floats) - offset} are left ({filled} layers with weights read before it)")
            _check_finite(path, floats[offset:offset + need], index, layer, header.nbytes + 4 * offset)
            for t in tensors:
                chunk = floats[offset:offset + t.numel()]
                offset += t.numel()
                if header.transposed and t.dim() == 2:
                    src = torch.from_numpy(chunk.copy()).view(t.shape[1], t.shape[0]).t()
                else:
                    src = torch.from_numpy(chunk.copy()).view_as(t)
                t.copy_(src)
            filled, last = filled + 1, index
    if offset < len(floats):
        total = sum(t.numel() for _, _, ts in layers for t in ts)
        raise WeightsError(
            f"{path}: {4 * (len(floats) - offset)} bytes ({len(floats) - offset} floats) are left over after the "
            f"last layer; the cfg needs {total} floats for its {len(layers)} layers with weights, the file has "
            f"{len(floats)}: wrong cfg for these weights?")
    model.seen = header.seen
    # A complete file covers every layer, weightless trailing ones ([yolo], [softmax] ...) included.
    layers_filled = len(model.layers) if filled == len(layers) else last + 1
    unfilled = tuple(index for index, _, _ in layers[filled:])
    report = LoadReport(path, header, layers_filled, filled, len(layers), unfilled)
    if not report.complete:
        log.info("%s: partial weights, filled layers 0..%d (%d of %d layers with weights)", path,
                 report.layers_filled - 1, filled, len(layers))
    return report


def _check_finite(path: str, values: np.ndarray, index: int, layer: nn.Module, start: int) -> None:
    """NaN or Inf in a layer's floats is an error (a network that silently outputs nothing otherwise)."""
    bad = ~np.isfinite(values)
    if bad.any():
        first = int(np.argmax(bad))
        raise WeightsError(
            f"{path}: layer {index} ({type(layer).__name__}) has {int(bad.sum())} non-finite values (NaN or Inf) "
            f"among its {len(values)} floats, the first at byte {start + 4 * first}")


def save_darknet_weights(model: nn.Module, path: str | os.PathLike, *, header: WeightsHeader | None = None,
                         cutoff: int | None = None) -> None:
    """Write ``model`` as a Darknet ``.weights`` file (version 0.2.5, 64-bit ``seen`` unless ``header`` says
    otherwise), atomically: a temp file in the same folder, then rename.

    Args:
        cutoff: write only layers ``0..cutoff-1`` (like ``darknet partial``).
    """
    header = header or WeightsHeader(seen=int(getattr(model, "seen", 0)))
    with atomic_writer(path) as f:
        f.write(header.to_bytes())
        for index, _, tensors in _weighted_layers(model):
            if cutoff is not None and index >= cutoff:
                break
            for t in tensors:
                t = t.detach().float().cpu()
                if header.transposed and t.dim() == 2:
                    t = t.t()
                f.write(t.contiguous().numpy().astype("<f4", copy=False).tobytes())
