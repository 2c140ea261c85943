"""Final boxes with the official yolov3-tiny weights on real COCO images equal boxes decoded, independently of
yolodet, from OpenCV DNN's raw head outputs with the same preprocessing and Darknet's rules."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from conftest import COCO128, FIXTURES, OFFICIAL_TINY, SHARED, need_shared, randomize
from yolodet.inference.detector import Detector
from yolodet.modeling.model import Darknet
from yolodet.inference.preprocess import preprocess
from yolodet.data.images import read_image

TINY_CFG = SHARED / "data" / "darknet-cfg" / "yolov3-tiny.cfg"


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


def reference_detections(raw: list[np.ndarray], heads, net_wh, mapping, conf: float, nms: float) -> list[tuple]:
    """Darknet's get_yolo_detections + correct_yolo_boxes + do_nms_sort, written from the C source, on OpenCV's raw
    conv outputs [1, A*(5+C), H, W]; NMS with OpenCV's NMSBoxes. Returns (label, score, x1, y1, x2, y2) sorted."""
    dets = []
    for out, head in zip(raw, heads):
        _, ch, gh, gw = out.shape
        a = len(head.anchors)
        p = out.reshape(a, ch // a, gh, gw)
        for n, j, i in zip(*np.nonzero(_sigmoid(p[:, 4]) > conf)):  # the loop Darknet runs, minus skipped cells
                    obj = _sigmoid(p[n, 4, j, i])
                    x = (i + _sigmoid(p[n, 0, j, i])) / gw * net_wh[0]
                    y = (j + _sigmoid(p[n, 1, j, i])) / gh * net_wh[1]
                    w = np.exp(p[n, 2, j, i]) * head.anchors[n][0]
                    h = np.exp(p[n, 3, j, i]) * head.anchors[n][1]
                    for c, prob in enumerate(obj * _sigmoid(p[n, 5:, j, i])):
                        if prob > conf:
                            dets.append((c, prob, x - w / 2, y - h / 2, w, h))
    kept = []
    for c in {d[0] for d in dets}:
        cls = [d for d in dets if d[0] == c]
        idx = cv2.dnn.NMSBoxes([list(map(float, d[2:])) for d in cls], [float(d[1]) for d in cls], conf, nms)
        for k in np.asarray(idx).reshape(-1):
            _, s, x, y, w, h = cls[k]
            # correct_yolo_boxes (mapping) then clip, as Darknet prints boxes
            sx, sy = mapping.orig_w / mapping.new_w, mapping.orig_h / mapping.new_h
            x1 = min(max((x - mapping.pad_x) * sx, 0), mapping.orig_w)
            y1 = min(max((y - mapping.pad_y) * sy, 0), mapping.orig_h)
            x2 = min(max((x + w - mapping.pad_x) * sx, 0), mapping.orig_w)
            y2 = min(max((y + h - mapping.pad_y) * sy, 0), mapping.orig_h)
            kept.append((c, s, x1, y1, x2, y2))
    return sorted(kept, key=lambda d: (d[0], -d[1]))


@pytest.mark.parametrize(("mode", "count"), [("darknet-letterbox", 24), ("darknet-resize", 24), ("letterbox", 8)])
def test_official_tiny_boxes_match_opencv(mode: str, count: int) -> None:
    weights, cfg = need_shared(OFFICIAL_TINY), need_shared(TINY_CFG)
    images = sorted((need_shared(COCO128) / "images").glob("*.jpg"))[:count]
    detector = Detector.from_cfg(cfg, weights, preprocess=mode)
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    names = [f"conv_{h.layer - 1}" for h in detector.model.heads]
    total = 0
    for path in images:
        image = read_image(path)
        blob, mapping = preprocess(image, detector.img_size, mode)
        net.setInput(blob[None])
        expected = reference_detections(net.forward(names), detector.model.heads, detector.img_size, mapping,
                                        0.25, 0.45)
        det = detector.predict([image], conf_thres=0.25, nms_thres=0.45)[0]
        ours = sorted(zip(det.labels.tolist(), det.scores.tolist(), *det.boxes.T.tolist()),
                      key=lambda d: (d[0], -d[1]))
        assert len(ours) == len(expected), f"{path.name}: {len(ours)} boxes vs {len(expected)} from OpenCV"
        for a, b in zip(ours, expected):
            assert a[0] == b[0], path.name
            assert a[1] == pytest.approx(b[1], abs=5e-4), f"{path.name}: score"
            np.testing.assert_allclose(a[2:], b[2:], atol=1e-2, rtol=1e-4, err_msg=f"{path.name}: box (pixels)")
        total += len(ours)
    assert total > count  # the comparison covered real detections


def test_detector_on_tiny_cfg_batches_equal_single(tmp_path) -> None:
    """Batched prediction equals one-by-one prediction, and boxes lie inside the images."""
    model = randomize(Darknet.from_cfg(FIXTURES / "tiny.cfg"), seed=3)
    with torch.no_grad():  # make the heads confident enough to produce boxes
        for h in model.heads:
            model.layers[h.layer - 1].conv.bias.add_(2.0)
    detector = Detector(model, preprocess="darknet-letterbox")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in ((50, 80), (64, 64), (97, 31))]
    batched = detector.predict(images, conf_thres=0.3, batch_size=3)
    single = [detector.predict([im], conf_thres=0.3)[0] for im in images]
    assert sum(len(d) for d in batched) > 0
    for im, a, b in zip(images, batched, single):
        torch.testing.assert_close(a.boxes, b.boxes, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=1e-5)
        assert (a.boxes[:, 0::2] <= im.shape[1]).all() and (a.boxes[:, 1::2] <= im.shape[0]).all()
        assert (a.boxes >= 0).all()


def test_detector_rejects_bad_settings() -> None:
    model = Darknet.from_cfg(FIXTURES / "tiny.cfg")
    with pytest.raises(ValueError, match="multiple"):
        Detector(model, img_size=50)
    with pytest.raises(ValueError, match="unknown preprocess"):
        Detector(model, preprocess="stretch")
    with pytest.raises(ValueError, match="class names"):
        Detector(model, names=["a"])
