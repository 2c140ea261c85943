"""Training and fine-tuning: the Darknet loss (:mod:`.loss`), the lr schedule (:mod:`.schedule`), one epoch
(:mod:`.engine`), transfer from pretrained files (:mod:`.transfer`, :mod:`.pretrained`), k-means anchors
(:mod:`.anchors`) and the whole run as one call::

    from yolodet.training import TrainConfig, train
    summary = train(TrainConfig(cfg="my.cfg", data="my.data", weights="yolov3-tiny.weights", epochs=30))
    summary.best_ap50, summary.last
"""

from yolodet.training.config import TrainConfig, TrainSummary
from yolodet.training.trainer import TrainError, train

__all__ = ["TrainConfig", "TrainError", "TrainSummary", "train"]
