"""Darknet cfg text: parsing (:mod:`.parser`), the typed ``[net]`` section (:mod:`.net`), editing for fine-tuning
(:mod:`.edit`) and the cfgs shipped with yolodet (:mod:`.shipped`). Nothing here imports torch."""

from yolodet.cfg.parser import SECTION_ALIASES, CfgBlock, CfgError, parse_cfg, parse_cfg_text

__all__ = ["SECTION_ALIASES", "CfgBlock", "CfgError", "parse_cfg", "parse_cfg_text"]
