"""Training augmentation and input pipeline: boxes follow the pixels, sizes and seeds are deterministic."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from yolodet.cfg import parse_cfg_text
from yolodet.cfg.net import NetConfig
from yolodet.data.sample import DatasetSource, Sample
from yolodet.data.train_dataset import TrainBatchSampler, TrainDataset, collate_train, multiscale_size
from yolodet.data.transforms import AugmentConfig, DarknetJitter, RandomHSV, build_transform


def _sample(w: int, h: int, box: tuple[int, int, int, int]) -> dict:
    """Black RGB image with a white rectangle exactly covering ``box`` (xyxy pixels, exclusive end)."""
    img = torch.zeros(3, h, w, dtype=torch.uint8)
    x1, y1, x2, y2 = box
    img[:, y1:y2, x1:x2] = 255
    return {"image": tv_tensors.Image(img),
            "boxes": tv_tensors.BoundingBoxes(torch.tensor([box], dtype=torch.float32), format="XYXY",
                                              canvas_size=(h, w)),
            "labels": torch.tensor([1])}


def _white_box(img: torch.Tensor) -> np.ndarray:
    ys, xs = np.nonzero(img[0].numpy() > 127)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


def test_resize_without_jitter_scales_boxes() -> None:
    out = DarknetJitter((64, 32))(_sample(200, 100, (20, 10, 120, 60)))
    assert out["image"].shape == (3, 32, 64)
    np.testing.assert_allclose(out["boxes"].numpy(), [[6.4, 3.2, 38.4, 19.2]], atol=1e-4)


def test_letterbox_keeps_the_aspect_ratio_with_grey_bars() -> None:
    out = DarknetJitter((64, 64), letterbox=True)(_sample(200, 100, (0, 0, 200, 100)))
    img = out["image"]
    assert img.shape == (3, 64, 64)
    assert (img[:, :16] == 127).all() and (img[:, 48:] == 127).all() and (img[:, 16:48] == 255).all()
    np.testing.assert_allclose(out["boxes"].numpy(), [[0, 16, 64, 48]], atol=1e-4)


@pytest.mark.parametrize("letterbox", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_jittered_boxes_follow_the_pixels(seed: int, letterbox: bool) -> None:
    torch.manual_seed(seed)
    aug = AugmentConfig(jitter=0.3, flip=True, letterbox=letterbox)  # colours are tested on their own
    out = build_transform((96, 64), aug)(_sample(160, 120, (50, 30, 110, 90)))
    assert out["image"].shape == (3, 64, 96) and out["image"].dtype == torch.uint8
    if len(out["boxes"]):  # the rectangle may be cropped away entirely
        np.testing.assert_allclose(out["boxes"].numpy()[0], _white_box(out["image"]), atol=1.5)
        assert out["labels"].tolist() == [1]


def test_boxes_cropped_out_of_the_image_are_dropped() -> None:
    out = build_transform((64, 64), AugmentConfig())(
        {**_sample(100, 100, (10, 10, 50, 50)),
         "boxes": tv_tensors.BoundingBoxes(torch.tensor([[10, 10, 50, 50], [20, 20, 20.5, 60]]), format="XYXY",
                                           canvas_size=(100, 100)),
         "labels": torch.tensor([0, 1])})
    assert out["labels"].tolist() == [0]


def test_hsv_follows_darknet() -> None:
    red = tv_tensors.Image(torch.tensor([200, 0, 0], dtype=torch.uint8).view(3, 1, 1).expand(3, 4, 4).clone())
    hsv = RandomHSV()
    same = hsv.transform(red, {"dhue": 0.0, "dsat": 1.0, "dexp": 1.0})
    assert torch.equal(same, red)
    cyan = hsv.transform(red, {"dhue": 0.5, "dsat": 1.0, "dexp": 1.0})  # half the colour circle
    assert cyan[:, 0, 0].tolist() == [0, 200, 200]
    darker = hsv.transform(red, {"dhue": 0.0, "dsat": 1.0, "dexp": 0.5})
    assert darker[:, 0, 0].tolist() == [100, 0, 0]
    grey = hsv.transform(red, {"dhue": 0.0, "dsat": 0.0, "dexp": 1.0})
    assert grey[:, 0, 0].tolist() == [200, 200, 200]


def test_augment_config_reads_the_cfg() -> None:
    net = NetConfig.from_block(parse_cfg_text("[net]\nhue=.1\nsaturation=1.5\nexposure=1.5\nmosaic=1")[0])
    aug = AugmentConfig.from_net(net, 0.3, mosaic=None, jitter=None)
    assert (aug.jitter, aug.hue, aug.saturation, aug.exposure, aug.flip, aug.mosaic) == (0.3, 0.1, 1.5, 1.5, True,
                                                                                          True)
    assert not AugmentConfig.from_net(net, 0.3, mosaic=False).mosaic


def test_sampler_order_sizes_and_resume() -> None:
    s = TrainBatchSampler(20, 3, size=(416, 416), seed=5, multiscale=1.0, accumulate=2)
    s.set_epoch(1)
    full = list(s)
    assert len(full) == len(s) == 7 and s.steps_per_epoch == 4
    assert sorted(i for batch in full for i, _, _ in batch) == list(range(20))
    assert all(len({size for _, size, _ in batch}) == 1 for batch in full)
    s.set_epoch(1, start=4)
    assert list(s) == full[4:]  # a resumed epoch continues exactly
    s.set_epoch(2)
    assert [k[0] for b in s for k in b] != [k[0] for b in full for k in b]
    sizes = {multiscale_size((416, 416), block, seed=0) for block in range(300)}
    assert all(w == h and w % 32 == 0 and 288 <= w <= 608 for w, h in sizes) and len(sizes) > 5
    # sizes change every 10 optimiser steps: 2 mini-batches per step -> 20 mini-batches share one size
    t = TrainBatchSampler(100, 1, size=(416, 416), seed=0, multiscale=1.0, accumulate=2)
    assert len({t.size_for(0, k) for k in range(20)}) == 1
    fixed = TrainBatchSampler(10, 2, size=(320, 256))
    assert {size for b in fixed for _, size, _ in b} == {(320, 256)}


def _write_images(tmp_path: Path, count: int) -> DatasetSource:
    samples = []
    for i in range(count):
        img = np.full((48, 64, 3), 40 * i, np.uint8)
        cv2.rectangle(img, (10, 10), (40, 30), (255, 255, 255), -1)
        path = tmp_path / f"{i}.png"
        cv2.imwrite(str(path), img)
        samples.append(Sample(path, np.array([[10 / 64, 10 / 48, 41 / 64, 31 / 48]], np.float32),
                              np.array([i % 2]), i))
    return DatasetSource(["a", "b"], samples, [])


def test_dataset_is_deterministic_and_skips_unreadable_images(tmp_path: Path, caplog) -> None:
    source = _write_images(tmp_path, 4)
    source.samples[2].image.write_bytes(b"not an image")
    ds = TrainDataset(source, AugmentConfig(jitter=0.2, hue=0.1, saturation=1.5, exposure=1.5, flip=True))
    a, b = ds[(0, (64, 64), 123)], ds[(0, (64, 64), 123)]
    assert torch.equal(a.image, b.image) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.image, ds[(0, (64, 64), 124)].image)
    with caplog.at_level(logging.WARNING):
        items = [ds[(i, (64, 64), i)] for i in range(4)]
    assert items[2] is None and "unreadable" in caplog.text
    batch = collate_train(items)
    assert batch.images.shape == (3, 3, 64, 64) and batch.indices == [0, 1, 3]
    assert batch.targets.shape[1] == 6 and set(batch.targets[:, 0].tolist()) <= {0, 1, 2}
    assert ((batch.targets[:, 2:] >= 0) & (batch.targets[:, 2:] <= 1)).all()
    assert len(collate_train([None])) == 0


def test_mosaic_combines_four_images(tmp_path: Path) -> None:
    ds = TrainDataset(_write_images(tmp_path, 4), AugmentConfig(mosaic=True))
    for seed in range(5):
        item = ds[(0, (96, 64), seed)]
        assert item.image.shape == (3, 64, 96)
        t = item.targets
        assert ((t[:, 1:] >= 0) & (t[:, 1:] <= 1)).all() and (t[:, 3] > t[:, 1]).all() and (t[:, 4] > t[:, 2]).all()
