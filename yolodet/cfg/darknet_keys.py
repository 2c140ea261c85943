"""The keys AlexeyAB's Darknet parser (``src/parser.c``) reads, per section, and which of them matter at inference.

Three kinds of key, as :func:`classify_key` tells them apart:

* implemented: the block's builder reads it (the registry's ``keys``);
* training-only: Darknet reads it but it changes only training, weight updates or GPU scheduling, so it has **no
  effect on inference** in Darknet either; yolodet accepts it and ignores it (:data:`TRAINING_ONLY`,
  :data:`COMMON_TRAINING_ONLY`); the few that only Darknet's GPU forward obeys (:data:`GPU_ONLY`) are ignored as its
  CPU forward ignores them, with a warning;
* everything else Darknet reads changes what Darknet computes; a key of that kind that yolodet does not implement is
  an error saying so (never silently ignored), and a key no Darknet parser reads is an error with a did-you-mean.

Warning: ``dontload`` and ``dontloadscales`` make Darknet's ``load_weights`` skip bytes of the ``.weights`` file
(the next layer then reads them); yolodet accepts them only when 0.
"""

from __future__ import annotations

import difflib
from typing import Iterable, Mapping

__all__ = ["COMMON", "COMMON_TRAINING_ONLY", "DARKNET_KEYS", "GPU_ONLY", "TRAINING_ONLY", "ZERO_ONLY",
           "did_you_mean", "training_only"]

COMMON = frozenset({"clip", "onlyforward", "dont_update", "burnin_update", "stopbackward", "train_only_bn",
                    "dontload", "dontloadscales", "learning_rate"})
"""Keys ``parse_network_cfg_custom`` reads for every layer (after the layer's own parser)."""

COMMON_TRAINING_ONLY = COMMON
"""All of :data:`COMMON` act on training only: gradient clipping, frozen layers (``stopbackward``,
``dont_update``, ``train_only_bn``, ``onlyforward``), per-layer learning-rate scale, and what to load."""

ZERO_ONLY = frozenset({"dontload", "dontloadscales"})
"""Accepted only with value 0: otherwise Darknet reads the ``.weights`` file differently (see module docstring)."""

_ACT = ("activation",)
DARKNET_KEYS: Mapping[str, frozenset[str]] = {name: frozenset(keys) for name, keys in {
    "local": ("activation", "filters", "pad", "size", "stride"),
    "convolutional": ("activation", "angle", "antialiasing", "assisted_excitation", "batch_normalize",
                      "bin_output", "binary", "cbn", "coordconv", "dilation", "dot", "filters", "flipped",
                      "grad_centr", "groups", "pad", "padding", "reverse", "rotate", "share_index", "size",
                      "stream", "stretch", "stretch_sway", "stride", "stride_x", "stride_y", "sway",
                      "wait_stream", "xnor"),
    "crnn": ("activation", "batch_normalize", "dilation", "groups", "hidden", "output", "pad", "padding",
             "shortcut", "size", "stride", "xnor"),
    "rnn": ("activation", "batch_normalize", "hidden", "logistic", "output", "shortcut"),
    "gru": ("batch_normalize", "output"),
    "lstm": ("batch_normalize", "output"),
    "conv_lstm": ("activation", "batch_normalize", "bottleneck", "dilation", "groups", "lstm_activation", "output",
                  "pad", "padding", "peephole", "shortcut", "size", "state_constrain", "stride",
                  "time_normalizer", "xnor"),
    "history": ("history_size",),
    "connected": ("activation", "batch_normalize", "output"),
    "softmax": ("groups", "noloss", "spatial", "temperature", "tree"),
    "contrastive": ("classes", "cls_normalizer", "contrastive_neg_max", "max_delta", "temperature",
                    "yolo_layer"),
    "yolo": ("anchors", "beta_nms", "classes", "cls_normalizer", "counters_per_class", "delta_normalizer",
             "dets_for_show", "dets_for_track", "embedding_layer", "focal_loss", "ignore_thresh", "iou_loss",
             "iou_normalizer", "iou_thresh", "iou_thresh_kind", "jitter", "label_smooth_eps", "map", "mask", "max",
             "max_delta", "new_coords", "nms_kind", "num", "obj_normalizer", "objectness_smooth", "random", "resize",
             "scale_x_y", "show_details", "sim_thresh", "track_ciou_norm", "track_history_size", "truth_thresh",
             "uc_normalizer", "yolo_point"),
    "gaussian_yolo": ("anchors", "beta_nms", "classes", "cls_normalizer", "counters_per_class",
                      "delta_normalizer", "ignore_thresh", "iou_loss", "iou_normalizer", "iou_thresh",
                      "iou_thresh_kind", "jitter", "label_smooth_eps", "map", "mask", "max", "max_delta",
                      "nms_kind", "num", "obj_normalizer", "objectness_smooth", "random", "resize", "scale_x_y",
                      "truth_thresh", "uc_normalizer", "yolo_point"),
    "region": ("absolute", "anchors", "bias_match", "class_scale", "classes", "classfix", "coord_scale", "coords",
               "focal_loss", "jitter", "log", "map", "mask_scale", "max", "noobject_scale", "num",
               "object_scale", "random", "rescore", "resize", "softmax", "sqrt", "thresh", "tree"),
    "detection": ("class_scale", "classes", "coord_scale", "coords", "forced", "jitter", "max", "noobject_scale",
                  "num", "object_scale", "random", "reorg", "rescore", "resize", "side", "softmax", "sqrt"),
    "cost": ("ratio", "scale", "type"),
    "crop": ("angle", "crop_height", "crop_width", "exposure", "flip", "noadjust", "saturation", "shift"),
    "reorg3d": ("reverse", "stride"),
    "reorg": ("reverse", "stride"),
    "local_avgpool": ("padding", "size", "stride", "stride_x", "stride_y"),
    "maxpool": ("antialiasing", "maxpool_depth", "maxpool_zero_nonmax", "out_channels", "padding", "size",
                "stride", "stride_x", "stride_y"),
    "avgpool": (),
    "dropout": ("dropblock", "dropblock_size_abs", "dropblock_size_rel", "probability"),
    "normalization": ("alpha", "beta", "kappa", "size"),
    "batchnorm": (),
    "shortcut": ("activation", "from", "weights_normalization", "weights_type"),
    "scale_channels": ("activation", "from", "scale_wh"),
    "sam": ("activation", "from"),
    "implicit": ("atoms", "filters", "mean", "std"),
    "activation": _ACT,
    "upsample": ("scale", "stride"),
    "route": ("group_id", "groups", "layers", "stream", "wait_stream"),
    "empty": (),
}.items()}
"""Section (yolodet's canonical, lower-case name) -> the keys its ``parse_*`` function in ``parser.c`` reads."""

_HEAD_TRAINING = ("beta_nms", "nms_kind")  # decode-time, but read by the NMS, not the layer: see HeadSpec
TRAINING_ONLY: Mapping[str, frozenset[str]] = {name: frozenset(keys) for name, keys in {
    # reverse: scales the weight update (update_convolutional_layer_gpu); coordconv: see GPU_ONLY
    "convolutional": ("angle", "assisted_excitation", "cbn", "dot", "grad_centr", "rotate", "stream",
                      "stretch", "stretch_sway", "sway", "wait_stream", "flipped", "reverse", "coordconv"),
    "maxpool": ("maxpool_zero_nonmax",),  # see GPU_ONLY
    "route": ("stream", "wait_stream"),
    "conv_lstm": ("time_normalizer",),  # scales a gradient in the GPU backward only
    "dropout": ("dropblock", "dropblock_size_abs", "dropblock_size_rel"),
    "cost": ("ratio", "scale", "type"),
    "crop": ("angle", "exposure", "flip", "saturation", "shift"),
    "softmax": ("noloss", "spatial"),  # spatial: see GPU_ONLY
    "contrastive": ("classes", "cls_normalizer", "contrastive_neg_max", "max_delta", "temperature", "yolo_layer"),
    "yolo": ("counters_per_class", "delta_normalizer", "dets_for_show", "dets_for_track", "embedding_layer",
             "focal_loss", "iou_thresh_kind", "map", "max", "objectness_smooth", "resize", "show_details",
             "sim_thresh", "track_ciou_norm", "track_history_size", "uc_normalizer", "yolo_point"),
    "gaussian_yolo": ("counters_per_class", "delta_normalizer", "focal_loss", "iou_thresh_kind", "map", "max",
                      "objectness_smooth", "resize", "uc_normalizer", "yolo_point", "cls_normalizer",
                      "ignore_thresh", "iou_loss", "iou_normalizer", "iou_thresh", "jitter", "label_smooth_eps",
                      "max_delta", "obj_normalizer", "random", "truth_thresh"),
    # sqrt: stored in l.sqrt, which region_layer.c never reads (CPU or GPU, forward or loss)
    "region": ("absolute", "bias_match", "class_scale", "classfix", "coord_scale", "focal_loss", "jitter", "log",
               "map", "mask_scale", "max", "noobject_scale", "object_scale", "random", "rescore", "resize",
               "sqrt", "thresh"),
    "detection": ("class_scale", "coord_scale", "forced", "jitter", "max", "noobject_scale", "object_scale",
                  "random", "reorg", "rescore", "resize"),
}.items()}
"""Per section: keys Darknet reads that change only training (loss scales, augmentation, GPU streams ...), or only
Darknet's GPU forward (:data:`GPU_ONLY`): yolodet computes what Darknet's CPU forward computes."""

GPU_ONLY: Mapping[str, Mapping[str, str]] = {
    "convolutional": {"coordconv": "Darknet's GPU forward (coord_conv_gpu) overwrites output channels 0, 1, 2 with "
                                   "the cell's x, y and radius in [-1, 1)"},
    "maxpool": {"maxpool_zero_nonmax": "Darknet's GPU forward (forward_zero_nonmax_kernel) zeroes each output value "
                                       "that differs from the input value at the same index"},
    "softmax": {"spatial": "Darknet's GPU forward takes the softmax over the channels of each cell instead "
                           "(ignoring groups and temperature)"},
}
"""Per section: keys (in :data:`TRAINING_ONLY`) that Darknet's CPU forward ignores but its GPU forward obeys; a
non-zero value is accepted with a warning saying what Darknet's GPU would compute instead."""


def training_only(section: str) -> frozenset[str]:
    """Keys accepted for ``section`` without effect on inference (its own plus :data:`COMMON_TRAINING_ONLY`)."""
    return TRAINING_ONLY.get(section, frozenset()) | COMMON_TRAINING_ONLY


def darknet_reads(section: str) -> frozenset[str]:
    """Every key Darknet's parser reads for ``section`` (empty for a section Darknet does not know)."""
    return DARKNET_KEYS.get(section, frozenset()) | (COMMON if section in DARKNET_KEYS else frozenset())


def did_you_mean(key: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest known key, or an empty string."""
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
