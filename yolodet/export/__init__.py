"""Export for deployment: ONNX files (raw head outputs, or end to end with NMS in the graph) for ONNX Runtime,
TensorRT and OpenVINO. ``pip install yolodet[onnx]``."""

from yolodet.export.end2end import END2END_OUTPUTS, End2End
from yolodet.export.onnx_file import DEFAULT_CONF_THRES, DEFAULT_MAX_DET, DEFAULT_NMS_THRES, to_onnx
from yolodet.inference.onnx_graph import DEFAULT_OPSET, ExportError, OnnxUnavailableError

__all__ = ["DEFAULT_CONF_THRES", "DEFAULT_MAX_DET", "DEFAULT_NMS_THRES", "DEFAULT_OPSET", "END2END_OUTPUTS",
           "End2End", "ExportError", "OnnxUnavailableError", "to_onnx"]
