"""The block registry: refuses duplicates, names the known entries, and every registered type is exercised."""

from __future__ import annotations

import functools

import pytest
import torch

from conftest import FIXTURES, REFERENCE_CFGS, ROOT
from yolodet.cfg import CfgError, parse_cfg_text
from yolodet.modeling.model import Darknet
from yolodet.modeling.registry import BLOCKS, Registry

# Block types that tiny.cfg lacks, so that every type is built even when ../shared is absent.
SNIPPETS = {
    "classifier": """[net]
width=8
height=8
channels=3
[convolutional]
filters=4
size=3
stride=2
pad=1
activation=leaky
[dropout]
probability=0.2
[avgpool]
[connected]
output=6
batch_normalize=1
activation=linear
[connected]
output=5
activation=linear
[softmax]
groups=1
[cost]
type=sse
""",
    # torchvision stages (the smallest registered backbone): [backbone] runs stages 0..3, [stage] claims stage 4
    "backbone": "[net]\nwidth=64\nheight=64\n[backbone]\nmodel=mobilenet_v3_small\nstage=3\n[stage]\n",
}


def test_duplicate_registration_is_refused() -> None:
    reg: Registry = Registry("widget")

    @reg.register("a", keys=("x",))
    def build_a(block, ctx):
        """Builds an a."""

    assert reg.get("a").builder is build_a and reg.get("a").keys == frozenset({"x"})
    assert reg.get("a").doc == "Builds an a."
    with pytest.raises(KeyError, match="widget 'a' is already registered"):
        reg.register("a")(lambda block, ctx: None)
    assert reg.get("a").builder is build_a  # the first registration is kept


def test_builtin_names_cannot_be_registered_twice() -> None:
    before = {name: BLOCKS.get(name) for name in BLOCKS.names()}
    for name in before:
        with pytest.raises(KeyError, match="already registered"):
            BLOCKS.register(name)(lambda block, ctx: None)
    assert {name: BLOCKS.get(name) for name in BLOCKS.names()} == before


def test_unknown_name_lists_known_names() -> None:
    reg: Registry = Registry("widget")
    for name in ("b", "a"):
        reg.register(name)(lambda block, ctx: None)
    assert reg.names() == ["a", "b"] and "a" in reg and "c" not in reg
    with pytest.raises(KeyError, match="unknown widget 'c'; known: a, b"):
        reg.get("c")
    with pytest.raises(KeyError) as info:
        BLOCKS.get("convolutionl")
    for name in BLOCKS.names():
        assert name in str(info.value)


def test_expected_builtin_block_types() -> None:
    assert set(BLOCKS.names()) >= {"convolutional", "connected", "maxpool", "avgpool", "upsample", "route",
                                   "shortcut", "scale_channels", "dropout", "cost", "softmax", "yolo"}


SNIPPETS.update({
    "zoo-layers": """[net]
width=8
height=8
channels=3
[crop]
crop_width=8
crop_height=8
[batchnorm]
[activation]
activation=mish
[empty]
[local_avgpool]
size=2
stride=1
[sam]
from=-2
[reorg3d]
stride=2
[reorg]
stride=2
[local]
filters=4
size=1
[convolutional]
filters=12
size=1
[region]
classes=1
num=2
coords=4
anchors=1,1,2,2
[contrastive]
""",
    "yolov1-heads": """[net]
width=4
height=4
channels=1
[implicit]
filters=4
atoms=2
[convolutional]
filters=20
size=1
[gaussian_yolo]
mask=0,1
classes=1
anchors=1,1,2,2
[route]
layers=-2
[connected]
output=6
[detection]
classes=1
num=1
coords=4
side=1
""",
    "recurrent": """[net]
inputs=4
[rnn]
hidden=3
output=3
[gru]
output=3
[lstm]
output=2
""",
    "crnn": """[net]
width=3
height=3
channels=2
[crnn]
hidden=2
output=2
pad=1
""",
    "conv_lstm": """[net]
width=3
height=3
channels=2
[conv_lstm]
output=2
pad=1
peephole=1
[history]
history_size=2
""",
})

SNIPPETS["lrn-antialiasing"] = """[net]
width=8
height=8
channels=3
[lrn]
[convolutional]
filters=4
size=3
stride=2
pad=1
antialiasing=1
[maxpool]
maxpool_depth=1
out_channels=2
"""


def _suite_cfgs() -> dict[str, str]:
    """Every cfg the suite builds, cheapest first: the snippets, tiny.cfg, then the reference and shipped cfgs."""
    shipped = sorted((ROOT / "cfg").glob("*.cfg"))
    cfgs = dict(SNIPPETS)
    for p in [FIXTURES / "tiny.cfg", *REFERENCE_CFGS, *shipped]:
        cfgs[f"{p.parent.name}/{p.stem}"] = p.read_text()
    return cfgs


def test_every_block_type_is_in_a_cfg_the_suite_builds() -> None:
    seen: dict[str, list[str]] = {}
    for name, text in _suite_cfgs().items():
        for block in parse_cfg_text(text)[1:]:
            seen.setdefault(block.type, []).append(name)
    missing = sorted(set(BLOCKS.names()) - set(seen))
    assert not missing, f"registered but in no test cfg: {missing}"
    assert set(seen) <= set(BLOCKS.names())


@functools.lru_cache(maxsize=None)
def _build_and_run(key: str) -> tuple[str, ...]:
    """Build and run one suite cfg; the block type of each layer."""
    blocks = parse_cfg_text(_suite_cfgs()[key])
    model = Darknet(blocks).eval()
    x = torch.rand(2, model.net.channels, model.net.height, model.net.width, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(x)
    assert all(torch.isfinite(o).all() for o in out), key
    assert len(model.layers) == len(blocks) - 1
    return tuple(b.type for b in blocks[1:])


@pytest.mark.parametrize("name", BLOCKS.names())
def test_every_block_type_builds(name: str) -> None:
    """Builds and runs the cheapest suite cfg that contains ``name`` (a snippet or tiny.cfg: no ../shared needed)."""
    candidates = [key for key, text in _suite_cfgs().items() if any(b.type == name for b in parse_cfg_text(text))]
    assert candidates, name
    assert name in _build_and_run(candidates[0])


def test_registered_keys_are_enforced() -> None:
    """The keys a builder registers are the only ones the model accepts for that section."""
    text = SNIPPETS["classifier"].replace("[dropout]\n", "[dropout]\nfilters=3\n")
    with pytest.raises(CfgError, match="unknown key for \\[dropout\\]; known: dropblock, dropblock_size_abs, dropblock_size_rel, probability"):
        Darknet.from_cfg_text(text)
