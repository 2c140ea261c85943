"""yolodet.training.criterion: which models train (refusals at the start, naming layer and reason) and training
of ``[region]`` and ``[Gaussian_yolo]`` cfgs end to end (train, resume, ``.weights`` saved and loadable)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import FIXTURES, SHARED, need_shared
from test_train import make_shapes_dataset
from yolodet.modeling.model import Darknet
from yolodet.modeling.weights import load_darknet_weights
from yolodet.training import TrainConfig, TrainError, train
from yolodet.training.criterion import UntrainableError, build_loss, check_trainable

ZOO = SHARED / "data" / "darknet-zoo"
REGION_2 = (FIXTURES / "region.cfg").read_text().replace("classes=3", "classes=2").replace("filters=24", "filters=21")
GAUSSIAN = (FIXTURES / "gaussian.cfg").read_text()
RNN = """[net]
width=16
height=16
channels=3
[convolutional]
filters=21
size=1
stride=1
activation=linear
[rnn]
output=21
hidden=8
[region]
anchors=1,1, 2,2, 3,3
classes=2
num=3
"""


@pytest.mark.parametrize("text, match", [
    (REGION_2.replace("softmax=1", "softmax=1\ntree=tree.txt"), r"layer 5 \[region\] \(line \d+\): tree="),
    (REGION_2.replace("random=0", "random=0\nclassfix=1"), "classfix=1 is not trainable"),
    (GAUSSIAN.replace("random=0", "random=0\niou_thresh_kind=giou"), r"\[gaussian_yolo\] .*iou_thresh_kind=giou"),
    (GAUSSIAN.replace("random=0", "random=0\nyolo_point=left_top"), "yolo_point=left_top"),
    (REGION_2.replace("[convolutional]\nbatch_normalize=1\nfilters=16", "[convolutional]\nxnor=1\n"
                      "batch_normalize=1\nfilters=16", 1), r"layer 2 \[convolutional\] xnor=1"),
])
def test_untrainable_heads_and_layers_are_named(text: str, match: str) -> None:
    with pytest.raises(UntrainableError, match=match):
        check_trainable(Darknet.from_cfg_text(text, "t.cfg"))


def test_recurrent_layers_are_refused_before_any_data_is_read(tmp_path: Path) -> None:
    cfg = tmp_path / "rnn.cfg"
    cfg.write_text(RNN)
    with pytest.raises(TrainError, match=r"layer 1 \[rnn\] .*recurrent layers run for inference only"):
        train(TrainConfig(cfg=str(cfg), data=str(tmp_path / "no-such.data"), output=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name, match", [("rnn.cfg", r"\[rnn\]"), ("yolo9000.cfg", "tree="),
                                         ("yolov3-tiny_xnor.cfg", "xnor=1"), ("yolov2-voc.cfg", None),
                                         ("tiny-yolo.cfg", None)])
def test_zoo_cfgs(name: str, match: str | None) -> None:
    model = Darknet.from_cfg(need_shared(ZOO / name), unknown_keys="ignore")
    if match is None:
        assert [type(s).__name__ for s in build_loss(model).heads] == ["RegionTrainSpec"]
    else:
        with pytest.raises(UntrainableError, match=match):
            check_trainable(model)


@pytest.mark.parametrize("text", [REGION_2, GAUSSIAN], ids=["region", "gaussian"])
def test_train_resume_and_save_weights(text: str, tmp_path: Path) -> None:
    cfg = tmp_path / "net.cfg"
    cfg.write_text(text)
    data = make_shapes_dataset(tmp_path / "data", n=4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        common = dict(workers=0, device="cpu", progress=False)
        first = train(TrainConfig(cfg=str(cfg), data=str(data), output=str(tmp_path / "run"), max_batches=4,
                                  batch_size=2, subdivisions=1, eval_interval=0, augment=False, lr=0.005,
                                  stop_after_steps=2, **common))
        assert first.interrupted and first.steps == 2
        done = train(TrainConfig(resume="auto", output=str(tmp_path / "run"), **common))
    finally:
        torch.set_num_threads(threads)
    assert done.steps == 4 and not done.interrupted
    losses = [row["total"] for row in done.history if row["total"] == row["total"]]  # an empty resumed epoch: nan
    assert losses and all(torch.isfinite(torch.tensor(losses)))  # finite after the resume (the history keeps the
    # resumed run's epochs; 4 steps on 4 images is too short for a loss trend)
    model = Darknet.from_cfg(cfg)
    load_darknet_weights(model, tmp_path / "run" / "final.weights")
    assert model.seen == 4 * 2
