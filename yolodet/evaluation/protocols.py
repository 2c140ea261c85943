"""The COCO evaluation protocols of the two Darknets, by name: which candidate threshold and NMS IoU each uses.

Darknet's own numbers differ by protocol, so a reported mAP must say which one produced it:

=================  ==========  =====  ==================================================================
name               conf_thres  NMS    what runs it
=================  ==========  =====  ==================================================================
``alexeyab-valid``  0.001      0.6    AlexeyAB's ``darknet detector valid`` (``validate_detector``)
``darknet-map``     0.005      0.45   AlexeyAB's ``darknet detector map`` (``validate_detector_map``)
``pjreddie-valid``  0.005      0.45   pjreddie's ``darknet detector valid``
=================  ==========  =====  ==================================================================

In every protocol the NMS kind is the cfg's (``nms_kind``/``beta_nms`` of its last head, see
:mod:`yolodet.inference.postprocess`), as in both programs.
"""

from __future__ import annotations

from dataclasses import dataclass

from yolodet.errors import YolodetError

__all__ = ["DEFAULT_PROTOCOL", "PROTOCOLS", "Protocol", "ProtocolError", "get_protocol"]


class ProtocolError(YolodetError, ValueError):
    """An unknown protocol name."""


@dataclass(frozen=True)
class Protocol:
    """One named COCO protocol: ``conf_thres`` (Darknet's ``thresh``), ``nms_thres`` and what runs it."""

    name: str
    conf_thres: float
    nms_thres: float
    source: str


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("alexeyab-valid", 0.001, 0.6, "AlexeyAB's darknet detector valid (validate_detector)"),
    Protocol("darknet-map", 0.005, 0.45, "AlexeyAB's darknet detector map (validate_detector_map)"),
    Protocol("pjreddie-valid", 0.005, 0.45, "pjreddie's darknet detector valid"),
)}
"""Name -> protocol (the names the ``--protocol`` option accepts)."""

DEFAULT_PROTOCOL = "darknet-map"
"""yolodet's evaluation default (0.005 / 0.45), the same numbers as ``darknet detector map`` and pjreddie's
``valid``; *not* AlexeyAB's ``detector valid``, which is ``alexeyab-valid``."""


def get_protocol(name: str) -> Protocol:
    """The protocol called ``name``; :class:`ProtocolError` listing the known names otherwise."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ProtocolError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}") from None
