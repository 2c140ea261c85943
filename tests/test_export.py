"""ONNX export (:mod:`yolodet.export`), checked against ONNX Runtime and pycocotools.

- every cfg of ``../shared/data/darknet-zoo`` that yolodet builds exports, passes ``onnx.checker`` and matches
  yolodet's raw outputs through ONNX Runtime within 1e-4 of the output's scale (random weights); detectors at a
  reduced input size (see :func:`_parity_size`), classifiers at the cfg's size;
- the end-to-end graph (decode + candidate rule + ONNX NonMaxSuppression) gives :class:`Detector`'s boxes on
  coco128 with the official yolov3-tiny weights, and its coco128 AP within 0.0005 of the native path;
- a layer ONNX cannot express fails with an :class:`ExportError` naming the layer and its cfg file:line.

Skipped without onnx/onnxruntime (``pip install yolodet[onnx]``) or ``../shared``.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import COCO128, OFFICIAL_TINY, ROOT, SHARED, need_shared, randomize
from yolodet.errors import YolodetError
from yolodet.export import ExportError, to_onnx
from yolodet.inference.onnx_graph import network_stride, size_fixing_layer
from yolodet.modeling.blocks.conv import ConvBlock, XnorConv
from yolodet.modeling.blocks.structural import MaxPool
from yolodet.modeling.model import Darknet

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

ZOO = SHARED / "data" / "darknet-zoo"
ZOO_CFGS = sorted(p.name for p in ZOO.glob("*.cfg")) or ["(../shared absent)"]
TOL = 1e-4
# Marked slow: the cfgs that take 11-56 s each on 2 loaded cores (40-160M parameters, up to 300 layers; 9 minutes
# together). The other 22 that yolodet builds run by default in about 85 s (35 s on a quiet machine), with every
# layer type of the zoo among them (mish, SPP maxpools and shortcuts in yolov4-csp-s-mish, scale_channels in
# enet-coco and efficientnet_b0, connected in alexnet and extraction.conv); the cfgs yolodet refuses are skipped.
SLOW = {"cd53paspp-gamma.cfg", "csdarknet53-omega.cfg", "cspx-p7-mish-omega.cfg", "cspx-p7-mish.cfg",
        "cspx-p7-mish_hp.cfg", "vgg-16.cfg",
        "csresnext50-panet-spp-original-optimal.cfg", "csresnext50-panet-spp.cfg", "darknet53.cfg", "densenet201.cfg",
        "extraction.cfg", "resnet101.cfg", "resnet152.cfg", "resnet50.cfg", "resnext152-32x4d.cfg",
        "yolov3-openimages.cfg", "yolov3-spp.cfg", "yolov3-voc.cfg", "yolov3-voc.yolov3-giou-40.cfg", "yolov3.cfg",
        "yolov3.coco-giou-12.cfg", "yolov3_5l.cfg", "yolov4-csp-x-mish.cfg", "yolov4-csp.cfg", "yolov4-p5.cfg",
        "yolov4-p6.cfg", "yolov4.cfg", "yolov4_new.cfg", "yolov7.cfg", "yolov7x.cfg"}


NOT_YET_EXPORTED: dict[str, str] = {}
"""cfg -> why yolodet builds it but does not export it with parity yet (xfail, strict=False: a fix shows as XPASS).
Every cfg of the zoo that yolodet builds exports with parity now."""


def _param(name: str):
    marks = [pytest.mark.slow] if name in SLOW else []
    if name in NOT_YET_EXPORTED:
        marks.append(pytest.mark.xfail(reason=NOT_YET_EXPORTED[name], strict=False))
    return pytest.param(name, marks=marks)


def _session(path: Path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _parity_size(model: Darknet) -> tuple[int, int]:
    """Detectors: (w, h) = (s + stride, s) with s = max(128, 2 * stride) and the network's stride (not the heads':
    yolov4-tiny_contrastive's one head is at 8, its backbone at 32), non-square so a swapped axis shows;
    classifiers and networks with a layer that fixes the input size (``[connected]`` over a map): the cfg's size."""
    if not model.heads or size_fixing_layer(model) is not None:
        return model.net.width, model.net.height
    stride = network_stride(model)
    side = max(128, 2 * stride)
    return side + stride, side


def _exact_before_binarisation(model: Darknet, x: torch.Tensor) -> torch.Tensor:
    """Binarised cfgs (``xnor=1``): ``sign(v)`` jumps at 0, so a rounding difference in the float layers before the
    first xnor layer (ONNX Runtime's conv sums in another order than torch's: 3e-7 of the scale) flips the sign of
    the values within it of 0, and each flip moves the xnor outputs by ``2 * mean``: 4e-2 of the output's scale at
    the end of darknet53_448_xnor for a single flip among 6.4 M values. The xnor layers themselves compute bit for
    bit as torch does (an exact integer conv, then one rounding each for ``mean`` and the bias). This makes the
    float layers before the first xnor layer exact in any summation order (input in steps of 1/256, conv weights of
    1/64, BN with ``var + eps = 1``, a power-of-2 scale, shifts in steps of 1/64), checks that they are (float64
    gives the same), and returns the input; other cfgs: ``x`` as is. (A float conv *between* xnor layers, as in
    yolov3-tiny_xnor, cannot be made exact this way; none flips a sign at the sizes tested here.)"""
    first = next((i for i, layer in enumerate(model.layers) if isinstance(layer, XnorConv)), None)
    if first is None:
        return x
    convs = [layer for layer in model.layers[:first] if isinstance(layer, ConvBlock)]
    assert len(convs) == 1 and convs[0] is model.layers[0] and convs[0].bn is not None, "a prefix not made exact"
    conv, bn = convs[0].conv, convs[0].bn
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        conv.weight.copy_(torch.round(conv.weight * 64) / 64)
        bn.running_var.fill_(1 - 1e-5)  # + 1e-5 is 1.0 in float32 (and in float64 rounded to float32)
        bn.weight.copy_(2.0 ** torch.randint(-1, 2, (bn.num_features,), generator=g))
        bn.bias.copy_(torch.round(bn.bias * 64) / 64)
        bn.running_mean.copy_(torch.round(bn.running_mean * 64) / 64)
        x = torch.round(x * 256) / 256
        scale, shift = bn.weight.double(), bn.bias.double() - bn.running_mean.double() * bn.weight.double()
        exact = copy.deepcopy(conv).double()(x.double()) * scale.view(-1, 1, 1) + shift.view(-1, 1, 1)
        assert torch.equal(bn(conv(x)).double(), exact), "the first layer is not exact in float32"
    return x


def _rel_diff(got: np.ndarray, ref: np.ndarray) -> float:
    ref64 = ref.astype(np.float64)
    return float(np.abs(got.astype(np.float64) - ref64).max() / max(np.abs(ref64).max(), 1e-12))


@pytest.mark.parametrize("name", [_param(n) for n in ZOO_CFGS])
def test_zoo_cfg_exports_with_parity(name: str, tmp_path: Path) -> None:
    cfg = need_shared(ZOO / name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = Darknet.from_cfg(cfg)
    except YolodetError as exc:
        pytest.skip(f"yolodet does not build {name}: {str(exc)[:160]}")
    model = randomize(model).eval()
    w, h = _parity_size(model)
    x = torch.rand(1, model.net.channels, h, w, generator=torch.Generator().manual_seed(0))
    x = _exact_before_binarisation(model, x)  # before the export: it sets weights
    path = to_onnx(model, tmp_path / "model.onnx", img_size=(w, h))
    onnx.checker.check_model(str(path))
    with torch.no_grad():
        ref = [o.numpy() for o in model(x)]
    got = _session(path).run(None, {"images": x.numpy()})
    assert [g.shape for g in got] == [r.shape for r in ref]
    for k, (g, r) in enumerate(zip(got, ref)):
        assert _rel_diff(g, r) <= TOL, f"{name} output {k}: {_rel_diff(g, r):.2e} of the output's scale"


def test_dynamic_export_runs_at_other_sizes_and_batches(tmp_path: Path) -> None:
    model = randomize(Darknet.from_cfg(ROOT / "cfg" / "yolo-v4-tiny.cfg")).eval()
    session = _session(to_onnx(model, tmp_path / "dyn.onnx", dynamic=True))
    for batch, (w, h) in ((1, (416, 416)), (3, (320, 224))):
        x = torch.rand(batch, 3, h, w)
        with torch.no_grad():
            ref = [o.numpy() for o in model(x)]
        got = session.run(None, {"images": x.numpy()})
        assert all(_rel_diff(g, r) <= TOL for g, r in zip(got, ref))


REORG_CFG = """[net]
width=128
height=96
channels=3
[convolutional]
filters=8
size=3
stride=2
pad=1
batch_normalize=1
activation=leaky
[convolutional]
filters=16
size=3
stride=2
pad=1
activation=leaky
[reorg]
stride=2
[route]
layers=-2
[convolutional]
filters=32
size=3
stride=2
pad=1
activation=leaky
[reorg3d]
stride=2
reverse=1
[reorg3d]
stride=2
[route]
layers=-1,-5
[convolutional]
filters=14
size=1
activation=linear
[region]
anchors=1,1,2,2
classes=2
num=2
"""
"""YOLOv2's [reorg] (Darknet's old one, on its input's dims) beside [reorg3d] both ways, in a few small layers."""


def _zoo_or_text(source: str) -> Darknet:
    if source == "reorg":
        return Darknet.from_cfg_text(REORG_CFG, "reorg.cfg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Darknet.from_cfg(need_shared(ZOO / source))


@pytest.mark.parametrize("source", ["reorg", "yolov3-tiny_occlusion_track.cfg", "yolov4-tiny_contrastive.cfg"])
def test_dynamic_export_of_reorg_crnn_contrastive_at_other_sizes(source: str, tmp_path: Path) -> None:
    """One graph with dynamic axes runs at the cfg's size and at a non-square one, batch 1 and 2 (``[crnn]``: one
    step from a zero state, as the model after ``reset_state``)."""
    model = randomize(_zoo_or_text(source)).eval()
    session = _session(to_onnx(model, tmp_path / "dyn.onnx", dynamic=True))
    stride = network_stride(model)
    for batch, (w, h) in ((1, (model.net.width, model.net.height)), (2, (5 * stride, 3 * stride))):
        x = torch.rand(batch, model.net.channels, h, w, generator=torch.Generator().manual_seed(batch))
        model.reset_state()
        with torch.no_grad():
            ref = [o.numpy() for o in model(x)]
        got = session.run(None, {"images": x.numpy()})
        assert [g.shape for g in got] == [r.shape for r in ref]
        for k, (g, r) in enumerate(zip(got, ref)):
            assert _rel_diff(g, r) <= TOL, f"{source} at {w}x{h}, output {k}: {_rel_diff(g, r):.2e}"


def _tie_order_free(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, num: np.ndarray):
    """The first ``num[i]`` detections of each image, ordered by (rounded box, label) instead of by score, so that
    two detections with equal scores (ONNX's NMS and torch order ties differently) compare alike."""
    out = []
    for i, n in enumerate(num):
        b, s, l = boxes[i, :n], scores[i, :n], labels[i, :n]
        order = np.lexsort((l, *np.round(b, 1).T[::-1]))
        out.append((b[order], s[order], l[order]))
    return out


@pytest.mark.parametrize("name", ["yolov3-tiny_occlusion_track.cfg", "yolov4-tiny_contrastive.cfg"])
def test_end2end_export_of_crnn_and_contrastive_cfgs(name: str, tmp_path: Path) -> None:
    """The end-to-end graph through ORT gives the detections of the same module run by torch, at a non-square
    size the graph was not traced at, batch 2."""
    from yolodet.export.end2end import End2End
    from yolodet.inference.decode import YoloDecoder
    from yolodet.inference.onnx_graph import prepare_for_export
    model = randomize(_zoo_or_text(name)).eval()
    stride = network_stride(model)
    x = torch.rand(2, 3, 4 * stride, 6 * stride, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # random weights: a threshold in the widest gap between the 150th and 250th scores
        rows = YoloDecoder(model.heads)(model(x), (6 * stride, 4 * stride))
    ranked = (rows[..., 4:5] * rows[..., 5:]).flatten().sort(descending=True).values[150:251].double()
    gap = int((ranked[:-1] - ranked[1:]).argmax())
    conf = float((ranked[gap] + ranked[gap + 1]) / 2)
    path = to_onnx(model, tmp_path / "e2e.onnx", dynamic=True, end2end=True, conf_thres=conf, max_det=300)
    module = End2End(prepare_for_export(model), conf_thres=conf, nms_thres=0.45, max_det=300).eval()
    with torch.no_grad():
        boxes, scores, labels, num = (t.numpy() for t in module(x))
    got = _session(path).run(None, {"images": x.numpy()})
    assert (got[3] == num).all() and 10 < num.min() and num.max() < 300, (got[3], num)
    np.testing.assert_allclose(got[1], scores, atol=1e-5)  # scores are sorted: equal whatever the tie order
    for (gb, gs, gl), (b, s, l) in zip(_tie_order_free(*got), _tie_order_free(boxes, scores, labels, num)):
        np.testing.assert_array_equal(gl, l)
        np.testing.assert_allclose(gs, s, atol=1e-5)
        np.testing.assert_allclose(gb, b, atol=1e-3)


@pytest.mark.parametrize("name, kind", [("yolov2.cfg", "region"), ("t1.test.cfg", "detection")])
def test_end2end_refuses_region_and_detection_heads(name: str, kind: str, tmp_path: Path) -> None:
    cfg = need_shared(ZOO / name)
    model = Darknet.from_cfg(cfg)
    index, line = _section(cfg, kind)
    with pytest.raises(ExportError) as info:
        to_onnx(model, tmp_path / "e2e.onnx", end2end=True)
    message = str(info.value)
    assert message.startswith(f"{cfg}:{line}: [{kind} #{index}]: --end2end decodes [yolo] heads only"), message
    assert not (tmp_path / "e2e.onnx").exists()


def _section(cfg: Path, kind: str) -> tuple[int, int]:
    """(layer index, cfg line) of the first ``[kind]`` section of ``cfg``."""
    headers = [(n, text.strip()) for n, text in enumerate(cfg.read_text().splitlines(), 1)
               if text.strip().startswith("[")][1:]  # after [net]
    return next((i, n) for i, (n, text) in enumerate(headers) if text == f"[{kind}]")


def test_layer_that_fixes_the_input_size_refuses_dynamic_axes_and_other_sizes(tmp_path: Path) -> None:
    """YOLOv1's [connected] layers have weights for every position of their input map: no dynamic H, W, no other
    size, each said with the layer's cfg file:line."""
    cfg = need_shared(ZOO / "t1.test.cfg")
    model = Darknet.from_cfg(cfg)
    index, line = _section(cfg, "connected")
    with pytest.raises(ExportError) as info:
        to_onnx(model, tmp_path / "t1.onnx", dynamic=True)
    message = str(info.value)
    assert message.startswith(f"{cfg}:{line}: [connected #{index}]: fixes the network's input size at the cfg's "
                              f"{model.net.width}x{model.net.height}") and "dynamic height and width" in message
    with pytest.raises(ExportError, match=f"connected #{index}.*got an image size of 448x448"):
        to_onnx(model, tmp_path / "t1.onnx", img_size=448)
    assert not (tmp_path / "t1.onnx").exists()


def test_size_check_reads_the_network_stride_not_the_heads(tmp_path: Path) -> None:
    """yolov4-tiny_contrastive's only [yolo] head is at stride 8, its backbone reaches 32: 136 x 128 is refused
    before tracing, 160 x 128 exports."""
    model = _zoo_or_text("yolov4-tiny_contrastive.cfg")
    assert [h.stride for h in model.heads] == [8] and network_stride(model) == 32
    with pytest.raises(ExportError, match=r"136x128 must be a positive multiple of the network's stride \(32"):
        to_onnx(model, tmp_path / "c.onnx", img_size=(136, 128))
    to_onnx(model, tmp_path / "c.onnx", img_size=(160, 128))


XNOR_CFG = """[net]
width=40
height=24
channels=16
[convolutional]
xnor=1
batch_normalize=1
filters=32
size=3
stride=1
pad=1
activation=leaky
[convolutional]
xnor=1
batch_normalize=1
filters=64
size=3
stride=2
pad=1
activation=leaky
[convolutional]
xnor=1
batch_normalize=1
filters=32
size=1
stride=1
pad=1
activation=linear
"""


def test_xnor_layers_are_bit_exact_through_onnx_runtime(tmp_path: Path) -> None:
    """Three xnor layers on a signed input give ORT's outputs bit for bit equal to torch's (with every graph
    optimisation on): the binary weights are constants, the integer conv is scaled by ``mean`` once."""
    model = randomize(Darknet.from_cfg_text(XNOR_CFG, "xnor.cfg")).eval()
    for dynamic, batch in ((False, 1), (True, 2)):
        path = to_onnx(model, tmp_path / "xnor.onnx", dynamic=dynamic)
        x = torch.randn(batch, 16, 24, 40, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            [ref] = model(x)
        [got] = _session(path).run(None, {"images": x.numpy()})
        assert np.array_equal(got, ref.numpy()), f"dynamic={dynamic}: {int((got != ref.numpy()).sum())} values differ"


def test_export_writes_metadata_and_replaces_atomically(tmp_path: Path) -> None:
    model = randomize(Darknet.from_cfg(ROOT / "cfg" / "yolo-v3-tiny.cfg"))
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old")
    with pytest.raises(ExportError, match="multiple of the network's stride"):
        to_onnx(model, target, img_size=100)
    assert target.read_bytes() == b"old"  # a failed export leaves the old file alone
    to_onnx(model, target, end2end=True, conf_thres=0.3, max_det=50)
    meta = {p.key: p.value for p in onnx.load(str(target)).metadata_props}
    assert meta["yolodet.conf_thres"] == "0.3" and meta["yolodet.max_det"] == "50"
    assert meta["yolodet.preprocess"] == "darknet-resize" and meta["yolodet.opset"] == "18"
    assert [o.name for o in onnx.load(str(target)).graph.output] == ["boxes", "scores", "labels", "num"]
    assert not list(tmp_path.glob(".*.tmp"))


class _Unexportable(MaxPool):
    """A maxpool that also runs an op the ONNX exporter has no symbolic for (``aten::i0``)."""

    def forward(self, x, refs):
        return super().forward(x, refs) + 0 * torch.special.i0(x[:, :1, :1, :1])


def test_unexportable_layer_names_layer_and_cfg_line(tmp_path: Path) -> None:
    cfg = ROOT / "cfg" / "yolo-v3-tiny.cfg"
    model = Darknet.from_cfg(cfg)
    index = 5
    pool = model.layers[index]
    assert isinstance(pool, MaxPool)
    bad = _Unexportable(pool.size, pool.stride, pool.pads, pool.out_shape)
    model.layers[index] = bad
    line = [i for i, text in enumerate(cfg.read_text().splitlines(), 1) if text.strip() == "[maxpool]"][2]
    with pytest.raises(ExportError) as info:
        to_onnx(model, tmp_path / "bad.onnx")
    message = str(info.value)
    assert message.startswith(f"{cfg}:{line}: [maxpool #{index}]:"), message
    assert "aten::i0" in message and "Traceback" not in message and "\n" not in message
    assert not (tmp_path / "bad.onnx").exists()


# -- end to end on coco128 with the official yolov3-tiny weights ----------------------------------------------

@pytest.fixture(scope="module")
def tiny_detector():
    from yolodet.inference.detector import Detector
    cfg = need_shared(SHARED / "data" / "darknet-cfg" / "yolov3-tiny.cfg")
    return Detector.from_cfg(cfg, need_shared(OFFICIAL_TINY), img_size=416)


def _coco128_batches(detector, mode: str, batch_size: int = 8):
    from yolodet.data import read_coco
    from yolodet.inference.loader import InferenceDataset, inference_loader
    source = read_coco(need_shared(COCO128 / "annotations" / "instances.json"))
    dataset = InferenceDataset([s.image for s in source.samples], detector.img_size, mode, decoder="stb")
    return source, inference_loader(dataset, batch_size=batch_size, workers=2)


def _e2e_detections(session, images: torch.Tensor, mappings):
    from yolodet.inference.postprocess import Detections
    boxes, scores, labels, num = session.run(None, {"images": images.contiguous().numpy()})
    out = []
    for i, mapping in enumerate(mappings):
        n = int(num[i])
        assert (labels[i, n:] == -1).all() and (scores[i, n:] == 0).all()
        out.append(Detections(mapping.to_original(torch.from_numpy(boxes[i, :n])), torch.from_numpy(scores[i, :n]),
                              torch.from_numpy(labels[i, :n]).long()))
    return out


def test_end2end_boxes_equal_detector_on_coco128(tiny_detector, tmp_path: Path) -> None:
    session = _session(to_onnx(tiny_detector.model, tmp_path / "e2e.onnx", dynamic=True, end2end=True,
                               conf_thres=0.25, nms_thres=0.45, max_det=300))
    _, loader = _coco128_batches(tiny_detector, tiny_detector.preprocess_mode)
    total = 0
    for batch in loader:
        ref = tiny_detector.infer(batch.images, batch.mappings, conf_thres=0.25, nms_thres=0.45)
        got = _e2e_detections(session, batch.images, batch.mappings)
        for r, g in zip(ref, got):
            assert len(g) == len(r) < 300
            order_r = np.lexsort((r.scores.numpy(), r.labels.numpy()))  # by class, then score
            order_g = np.lexsort((g.scores.numpy(), g.labels.numpy()))
            assert (g.labels.numpy()[order_g] == r.labels.numpy()[order_r]).all()
            np.testing.assert_allclose(g.scores.numpy()[order_g], r.scores.numpy()[order_r], atol=1e-5)
            np.testing.assert_allclose(g.boxes.numpy()[order_g], r.boxes.numpy()[order_r], atol=2e-3)
            assert (np.diff(g.scores.numpy()) <= 0).all()  # descending, as Detector's
            total += len(r)
    assert total > 300  # a real comparison: coco128 gives ~500 detections at 0.25


@pytest.mark.parametrize("mode", ["darknet-resize", pytest.param("darknet-letterbox", marks=pytest.mark.slow)])
def test_coco128_ap_of_end2end_graph_and_ort_backend_match_native(tiny_detector, mode: str, tmp_path: Path) -> None:
    """The end-to-end graph through ORT, scored by yolodet's pycocotools path, and ``backend="onnxruntime"``
    through ``evaluate``: the same coco128 AP as native, within 0.0005."""
    from yolodet.evaluation import evaluate
    from yolodet.inference.detector import Detector
    from yolodet.evaluation.coco import category_mapping, coco_evaluate, detections_to_coco
    k = 2000
    session = _session(to_onnx(tiny_detector.model, tmp_path / "e2e.onnx", dynamic=True, end2end=True,
                               conf_thres=0.005, nms_thres=0.45, max_det=k))
    source, loader = _coco128_batches(tiny_detector, mode)
    gt = json.loads((COCO128 / "annotations" / "instances.json").read_text())
    class_ids, _ = category_mapping(80, [c["id"] for c in gt["categories"]], source.category_ids)
    results = []
    for batch in loader:
        for index, det in zip(batch.indices, _e2e_detections(session, batch.images, batch.mappings)):
            assert len(det) < k  # no image hit the cap: the padded output holds every detection
            results.extend(detections_to_coco(det, source.samples[index].image_id, class_ids))
    ap = coco_evaluate(gt, results, image_ids=[int(s.image_id) for s in source.samples]).stats[0]
    native = evaluate(tiny_detector, source, preprocess=mode, conf_thres=0.005, nms_thres=0.45, gt=gt,
                      decoder="stb", workers=2, progress=False)
    backend = Detector(tiny_detector.model, img_size=416, backend="onnxruntime")
    ours = evaluate(backend, source, preprocess=mode, conf_thres=0.005, nms_thres=0.45, gt=gt, decoder="stb",
                    workers=2, progress=False)
    print(f"{mode}: AP native {native.ap:.5f}, end2end graph {ap:.5f}, ORT backend {ours.ap:.5f}; "
          f"{len(native.results)} / {len(results)} / {len(ours.results)} detections")
    assert abs(ap - native.ap) <= 5e-4, f"{mode}: end-to-end ONNX AP {ap:.5f}, native {native.ap:.5f}"
    assert abs(ours.ap - native.ap) <= 5e-4 and abs(ours.ap50 - native.ap50) <= 5e-4, (
        f"{mode}: onnxruntime backend AP {ours.ap:.5f} AP50 {ours.ap50:.5f}, native {native.ap:.5f} "
        f"{native.ap50:.5f}")
    assert 0.13 < native.ap < 0.16  # the Darknet numbers (test_eval_coco128.py): a real model on real data


def test_cli_export_module(tmp_path: Path, capsys) -> None:
    import argparse

    from yolodet.cli import export as cli_export
    parser = argparse.ArgumentParser()
    cli_export.add_arguments(parser)
    cfg, weights = ROOT / "cfg" / "yolo-v3-tiny.cfg", need_shared(OFFICIAL_TINY)
    out = tmp_path / "tiny.onnx"
    args = parser.parse_args(["--cfg", str(cfg), "--weights", str(weights), "--img-size", "320", "256", "--end2end",
                              "--max-det", "20", "--output", str(out)])
    assert cli_export.run(args) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    model = onnx.load(str(out))
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 256, 320]
    assert [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim] == [1, 20, 4]
    with pytest.raises(ExportError, match="--conf-thres only apply with --end2end"):
        cli_export.run(parser.parse_args(["--cfg", str(cfg), "--weights", str(weights), "--conf-thres", "0.1"]))
    assert isinstance(cli_export.HELP, str) and "\n" not in cli_export.HELP


def test_end2end_refuses_heads_it_does_not_decode(tmp_path: Path) -> None:
    text = ("[net]\nwidth=64\nheight=64\nchannels=3\n[convolutional]\nfilters=14\nsize=1\nactivation=linear\n"
            "[region]\nanchors=1,1,2,2\nclasses=2\nnum=2\nsoftmax=1\n")
    model = Darknet.from_cfg_text(text)
    with pytest.raises(ExportError, match=r"--end2end decodes \[yolo\] heads only, not \[region\]"):
        to_onnx(model, tmp_path / "e2e.onnx", end2end=True)
    assert not (tmp_path / "e2e.onnx").exists()
