"""Datasets: readers for Darknet lists, COCO json, Pascal VOC xml and Ultralytics dataset YAML, all producing
one internal format.

Every reader returns a :class:`DatasetSource` (class names, :class:`Sample` list, :class:`LabelIssue` list);
boxes are ``float32[N, 4]`` normalised ``xyxy``, labels ``int64[N]`` 0-based. :func:`load_dataset` picks the
reader from a path (rules in :mod:`yolodet.data.sources`); :func:`to_coco_gt` makes COCO ground truth of any
source for pycocotools.
"""

from yolodet.data.coco import read_coco
from yolodet.data.darknet import label_path_candidates, parse_data_file, read_darknet_data, read_names
from yolodet.data.sample import DatasetError, DatasetSource, LabelIssue, Sample
from yolodet.data.sources import load_dataset, to_coco_gt
from yolodet.data.voc import read_voc
from yolodet.data.yolo_yaml import read_yolo_yaml

__all__ = [
    "DatasetError",
    "DatasetSource",
    "LabelIssue",
    "Sample",
    "label_path_candidates",
    "load_dataset",
    "parse_data_file",
    "read_coco",
    "read_darknet_data",
    "read_names",
    "read_voc",
    "read_yolo_yaml",
    "to_coco_gt",
]
