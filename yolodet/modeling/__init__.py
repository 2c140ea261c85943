"""cfg blocks -> ``nn.Module``: the block registry (:mod:`.registry`), one module per layer family
(:mod:`.blocks`), the :class:`~yolodet.modeling.model.Darknet` model, torchvision backbone specs
(:mod:`.backbones`), Darknet ``.weights`` (:mod:`.weights`), yolodet checkpoints (:mod:`.checkpoint`) and the
layer table (:mod:`.info`)."""
