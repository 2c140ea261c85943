"""yolodet: Darknet-faithful YOLO detection in PyTorch."""

__version__ = "0.1.0"
