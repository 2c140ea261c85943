"""Recurrent layers keep their state between forwards (as Darknet's network_predict does) until reset."""

from __future__ import annotations

import pytest
import torch

from conftest import randomize
from yolodet.modeling.model import Darknet

CFGS = {
    "rnn": "[rnn]\nhidden=6\noutput=5\nactivation=leaky\n",
    "gru": "[gru]\noutput=5\n",
    "lstm": "[lstm]\noutput=5\n",
    "crnn": "[crnn]\nhidden=3\noutput=2\nsize=3\npad=1\nactivation=leaky\n",
}


@pytest.mark.parametrize("kind", sorted(CFGS))
def test_state_carries_over_and_resets(kind: str) -> None:
    net = "[net]\ninputs=4\n" if kind != "crnn" else "[net]\nwidth=3\nheight=3\nchannels=2\n"
    model = randomize(Darknet.from_cfg_text(net + CFGS[kind]).eval(), seed=2)
    x = torch.rand(1, *model.net.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        first, second = model(x)[0], model(x)[0]
        model.reset_state()
        again = model(x)[0]
    assert not torch.allclose(first, second), "the second step must see the first step's state"
    assert torch.equal(first, again)


def test_batch_size_change_starts_from_zero() -> None:
    model = randomize(Darknet.from_cfg_text("[net]\ninputs=4\n" + CFGS["gru"]).eval(), seed=2)
    x = torch.rand(2, 4, 1, 1)
    with torch.no_grad():
        model(x[:1])
        both = model(x)[0]
        model.reset_state()
        assert torch.equal(both, model(x)[0])
