"""Training steps: optimiser from the cfg, ``train_one_epoch`` with gradient accumulation, and the run state
(step, epoch, RNG) that checkpoints carry so a resumed run continues exactly.

One optimiser *step* = ``batch`` images = ``subdivisions`` mini-batches (Darknet's iteration). The loss of each
mini-batch is a per-image mean (see :mod:`yolodet.loss`) divided by the number of mini-batches per step, and the
learning rate of step ``s`` is ``schedule(s)`` (Darknet computes the rate before the update).
"""

from __future__ import annotations

import logging
import math
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from yolodet.modeling.blocks.conv import ConnectedBlock, ConvBlock
from yolodet.data.train_dataset import TrainBatch
from yolodet.training.loss import LOSS_PARTS
from yolodet.training.schedule import LrSchedule

log = logging.getLogger(__name__)

__all__ = ["RunState", "build_optimizer", "get_rng_state", "set_rng_state", "train_one_epoch"]


@dataclass
class RunState:
    """Where a run is; saved in every checkpoint.

    Attributes:
        epoch: the epoch in progress (0-based).
        step: optimiser steps done (Darknet's ``get_current_batch``).
        batch_in_epoch: mini-batches of ``epoch`` already consumed by completed steps (resume skips them).
        best_fitness: best validation AP50 so far (-1: none yet).
        train_seconds: wall time spent in training steps (validation excluded).
        history: one dict per finished epoch (the CSV rows).
    """

    epoch: int = 0
    step: int = 0
    batch_in_epoch: int = 0
    best_fitness: float = -1.0
    train_seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunState":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def build_optimizer(model: nn.Module, *, lr: float, momentum: float = 0.9, decay: float = 0.0005,
                    adam: bool = False, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
                    ) -> torch.optim.Optimizer:
    """SGD (Darknet) or Adam over the trainable parameters; weight decay only on conv/connected weights, as
    Darknet's ``update_convolutional_layer`` (biases and BN scales are not decayed).

    With Darknet's update ``w += lr/batch * (sum of -grad - decay*batch*w)`` and a per-image mean loss, PyTorch's
    SGD(momentum, dampening=0, weight_decay=decay) is the same update.
    """
    decayed, plain = [], []
    weights = {id(m.conv.weight) for m in model.modules() if isinstance(m, ConvBlock)}
    weights |= {id(m.fc.weight) for m in model.modules() if isinstance(m, ConnectedBlock)}
    for p in model.parameters():
        if p.requires_grad:
            (decayed if id(p) in weights else plain).append(p)
    groups = [{"params": decayed, "weight_decay": decay}, {"params": plain, "weight_decay": 0.0}]
    if adam:
        return torch.optim.Adam(groups, lr=lr, betas=betas, eps=eps)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)


def get_rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) generator states, in types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def to_input(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """uint8 [B, 3, h, w] -> float [0, 1] on ``device`` (channels-last when asked)."""
    x = images.to(device, non_blocking=True).float().div_(255)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def train_one_epoch(model: nn.Module, loss_fn: Callable[..., dict[str, torch.Tensor]],
                    optimizer: torch.optim.Optimizer, loader: Iterable[TrainBatch], *, schedule: LrSchedule,
                    state: RunState, accumulate: int,
                    batches_per_epoch: int, max_steps: int, device: torch.device,
                    scaler: torch.amp.GradScaler | None = None, autocast_dtype: torch.dtype | None = None,
                    channels_last: bool = False, should_stop: Callable[[RunState], bool] = lambda s: False,
                    progress: bool = True, images_per_step: int = 0) -> dict[str, float]:
    """Train over ``loader`` (the rest of epoch ``state.epoch``), updating ``state`` in place.

    Stops early, always right after an optimiser step, when ``state.step`` reaches ``max_steps`` or
    ``should_stop(state)`` is true. The model must already be in training mode (see
    :func:`yolodet.transfer.set_train_mode`). ``loss_fn(outputs, targets, input_size, seen=...)`` gets the images
    trained on so far, this mini-batch included (Darknet's ``net.seen``), counting ``images_per_step`` per step.

    Returns:
        Mean loss parts per image over the epoch's mini-batches, ``lr`` (last), ``images``, ``seconds``,
        ``img_per_s``.

    Raises:
        FloatingPointError: a non-finite loss (the message names the step and the parts).
    """
    sums = dict.fromkeys(LOSS_PARTS, 0.0)
    batches = images = pending = pending_images = 0
    lr = schedule(state.step)
    start = time.perf_counter()
    bar = tqdm(loader, total=batches_per_epoch, initial=state.batch_in_epoch, desc=f"epoch {state.epoch}",
               unit="batch", disable=not progress, dynamic_ncols=True, leave=False)
    optimizer.zero_grad(set_to_none=True)
    position = state.batch_in_epoch
    for batch in bar:
        position += 1
        pending += 1
        if len(batch):
            x = to_input(batch.images, device, channels_last)
            autocast = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
            with autocast:
                outputs = model(x)
            seen = state.step * images_per_step + pending_images + len(batch)  # Darknet counts before forward
            parts = loss_fn(outputs, batch.targets, (x.shape[3], x.shape[2]), seen=seen)
            pending_images += len(batch)
            if not torch.isfinite(parts["total"]):
                raise FloatingPointError(f"non-finite loss at step {state.step} (epoch {state.epoch}): "
                                         + ", ".join(f"{k}={v.item():.4g}" for k, v in parts.items()))
            total = parts["total"] / accumulate
            (scaler.scale(total) if scaler is not None else total).backward()
            for k in LOSS_PARTS:
                sums[k] += parts[k].item()
            batches += 1
            images += len(batch)
        if pending == accumulate or position == batches_per_epoch:
            lr = schedule(state.step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.batch_in_epoch = position
            pending = pending_images = 0
            elapsed = time.perf_counter() - start
            if progress and batches:
                bar.set_postfix_str(" ".join(f"{k}={sums[k] / batches:.3f}" for k in LOSS_PARTS)
                                    + f" lr={lr:.2e} {images / max(elapsed, 1e-9):.1f} img/s step={state.step}")
            if state.step >= max_steps or should_stop(state):
                break
    bar.close()
    seconds = time.perf_counter() - start
    state.train_seconds += seconds
    means = {k: (v / batches if batches else math.nan) for k, v in sums.items()}
    return {**means, "lr": lr, "images": images, "seconds": seconds, "img_per_s": images / max(seconds, 1e-9)}
