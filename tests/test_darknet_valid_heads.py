"""``[region]``, ``[Gaussian_yolo]`` and ``[detection]`` detections against ``darknet detector valid``.

Each cfg gets random weights (written with yolodet's saver; the layer feeding the head scaled so that
objectness and class scores spread over (0, 1)), then Darknet C's ``detector valid`` (AlexeyAB's protocol,
thresh 0.001, NMS 0.6) and yolodet's Detector run on the first 8 coco128 images. A detection matches one of the
other side with the same image and class, IoU > 0.99 and |score difference| < 1e-3 (one to one); at least 99.5%
of each side's must match. Slow: Darknet runs without SIMD on shared cores.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import COCO128, SHARED, need_shared, randomize
from detection_matching import darknet_valid, match_detections, yolodet_valid
from yolodet.data.images import read_image_stb, stb_available
from yolodet.inference.preprocess import preprocess
from yolodet.modeling.blocks.conv import ConnectedBlock, ConvBlock
from yolodet.modeling.model import Darknet
from yolodet.modeling.weights import save_darknet_weights

ZOO = SHARED / "data" / "darknet-zoo"


def _smaller(size: int):
    """A cfg edit: the network input set to ``size`` x ``size`` (Darknet's CPU time)."""
    def edit(text: str) -> str:
        lines = [line for line in text.splitlines() if not line.strip().startswith(("width", "height"))]
        return "\n".join(lines).replace("[net]", f"[net]\nwidth={size}\nheight={size}", 1) + "\n"
    return edit


# name -> (zoo cfg, edit of its text)
CASES = {
    "yolov2-tiny": ("yolov2-tiny.cfg", lambda text: text),
    "yolov2-tiny-softmax0": ("yolov2-tiny.cfg", lambda text: text.replace("softmax=1", "softmax=0")),
    "Gaussian_yolov3_BDD": ("Gaussian_yolov3_BDD.cfg", _smaller(320)),
    "t1.test": ("t1.test.cfg", lambda text: text),
}


def _targets(head) -> list[tuple[float, float]]:
    """(mean, std) wanted for each raw channel of one head (per anchor, or per block of YOLOv1's flat layout):
    box offsets spread over their cell, sizes of a few cells, objectness and classes over (0, 1)."""
    if head.kind == "detection":
        cells = head.side * head.side
        box = [(0.5, 0.3), (0.5, 0.3), (0.4, 0.15), (0.4, 0.15)]
        return [(0.0, 0.5)] * (cells * head.classes) + [(0.3, 0.5)] * (cells * head.num) + box * (cells * head.num)
    if head.kind == "gaussian_yolo":
        per = [(0.0, 1.0), (0.0, 1.5)] * 2 + [(0.0, 0.5), (0.0, 1.5)] * 2 + [(0.0, 2.0)] * (1 + head.classes)
    else:
        cls = (0.0, 3.0) if head.softmax else (0.2, 0.5)
        per = [(0.0, 1.0)] * 2 + [(0.0, 0.5)] * 2 + [(0.0, 2.0)] + [cls] * head.classes
    return per * head.num_anchors


def _random_weights(cfg: Path, path: Path, image: Path, seed: int = 0) -> Darknet:
    """Random weights (:func:`conftest.randomize`), the layer feeding each head then rescaled (an affine map of
    its weights and bias per channel group) so that its output on ``image`` has the :func:`_targets` statistics."""
    model = randomize(Darknet.from_cfg(cfg).eval(), seed)
    x = torch.from_numpy(preprocess(read_image_stb(image), (model.net.width, model.net.height), "darknet-resize")[0])
    with torch.no_grad():
        outs = model(x[None])
        for head, out in zip(model.heads, outs):
            layer = model.layers[head.layer - 1]
            inner = layer.conv if isinstance(layer, ConvBlock) else layer.fc if isinstance(layer, ConnectedBlock) \
                else None
            assert inner is not None and inner.bias is not None, f"layer {head.layer - 1} feeds a head: no bias"
            values = out[0].reshape(out.shape[1], -1)  # [channels, positions]
            groups: dict[tuple[float, float], list[int]] = {}
            for c, target in enumerate(_targets(head)):
                groups.setdefault(target, []).append(c)
            for (mean, std), idx in groups.items():
                sel = values[idx]
                gain = std / sel.std().item()
                inner.weight[idx] *= gain
                inner.bias[idx] = (inner.bias[idx] - sel.mean()) * gain + mean
    save_darknet_weights(model, path)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_head_detections_match_darknet_detector_valid(case: str, oracle, tmp_path: Path) -> None:
    name, edit = CASES[case]
    images = sorted(need_shared(COCO128 / "images").glob("*.jpg"))[:8]
    base = need_shared(ZOO / name)
    if not stb_available():
        pytest.skip("yolodet._stb_image is not built: Darknet's numbers need its decoder")
    cfg = tmp_path / f"{case}.cfg"
    cfg.write_text(edit(base.read_text()))
    weights = tmp_path / f"{case}.weights"
    model = _random_weights(cfg, weights, images[0])
    theirs = darknet_valid(oracle, cfg, weights, images, tmp_path, classes=model.num_classes)
    ours = yolodet_valid(cfg, weights, images)
    matched = match_detections(ours, theirs)
    print(f"{case}: {matched} matched, Darknet {len(theirs)}, yolodet {len(ours)}")
    assert len(theirs) > 100 * len(images), f"{case}: only {len(theirs)} Darknet detections; the test needs many"
    assert matched >= 0.995 * len(theirs) and matched >= 0.995 * len(ours), (
        f"{case}: {matched} matched of Darknet's {len(theirs)} / yolodet's {len(ours)}")
