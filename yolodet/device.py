"""One rule for ``--device`` / ``device=`` everywhere (detect, val, train, the library).

``"auto"`` (the default of every subcommand and entry point) is the first CUDA GPU when one is available, else
the CPU. Explicit values: ``cpu``, ``cuda``, ``cuda:N`` or a bare index ``N`` (= ``cuda:N``). Anything else, or a
GPU that is not there, is a :class:`DeviceError` with the choices, never torch's raw message.
"""

from __future__ import annotations

import re

import torch

from yolodet.errors import YolodetError

__all__ = ["DEFAULT_DEVICE", "DeviceError", "resolve_device"]

DEFAULT_DEVICE = "auto"
"""The device default of every subcommand and library entry point."""

_SPEC = re.compile(r"^(?:cpu|auto|cuda(?::\d+)?|\d+)$")


class DeviceError(YolodetError, ValueError):
    """An unknown or unavailable device."""


def resolve_device(spec: str | int | torch.device | None = DEFAULT_DEVICE) -> torch.device:
    """``"auto"`` / None, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"1"`` or a :class:`torch.device` -> the device.

    Raises:
        DeviceError: an unknown name, or a CUDA device this machine does not have.
    """
    if isinstance(spec, torch.device):
        text = str(spec)
    else:
        text = DEFAULT_DEVICE if spec is None else str(spec).strip().lower()
    if "," in text:
        raise DeviceError(f"device {spec!r}: one process runs on one device; for several GPUs start one process "
                          f"per GPU with `torchrun --nproc-per-node N -m yolodet ...` (see README, Scaling out)")
    if not _SPEC.match(text):
        raise DeviceError(f"device {spec!r} is not one of: auto, cpu, cuda, cuda:N, N (a GPU index)")
    if text == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    index = int(text.rpartition(":")[2]) if ":" in text else (int(text) if text.isdigit() else 0)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if index >= count:
        have = f"{count} CUDA device(s)" if count else "no CUDA device"
        raise DeviceError(f"device {spec!r}: this machine has {have}; use --device cpu (or auto)")
    return torch.device(f"cuda:{index}")
