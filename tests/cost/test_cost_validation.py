"""Bad input raises ValueError naming the field and the allowed values, before any compute."""

import pytest

from clq.cost import cost_report, memory_bytes

GOOD = dict(latent_layer=19, buffer_size=1500, lr_bits=8, new_images=300, epochs=4, batch_size=128,
            target="vega")


@pytest.mark.parametrize("bad, message", [
    (dict(latent_layer=28), r"latent_layer must be in 0\.\.27"),
    (dict(latent_layer=-1), r"latent_layer must be in 0\.\.27"),
    (dict(latent_layer=19.0), "latent_layer must be an integer"),
    (dict(lr_bits=0), r"lr_bits \(replay\.bits\) must be an integer in 1\.\.16 or null"),
    (dict(lr_bits=17), r"lr_bits \(replay\.bits\) must be an integer in 1\.\.16"),
    (dict(buffer_size=-1), r"buffer_size \(replay\.size\) must be an integer >= 0"),
    (dict(new_images=0), r"new_images \(data\.images_per_event\) must be an integer >= 1"),
    (dict(epochs=-4), r"epochs \(train\.epochs\) must be an integer >= 1"),
    (dict(batch_size=0), r"batch_size \(train\.batch_size\) must be an integer >= 1"),
    (dict(frozen_bits=9), r"frozen_bits \(quant\.frozen_bits\) must be an integer in 2\.\.8 or null"),
    (dict(target="gap42"), r"target must be one of \['stm32l4', 'vega'\]"),
    (dict(backward_error="some"), r"backward_error must be one of \['all_but_first', 'none'\]"),
    (dict(l1_bytes=-1), r"l1_bytes"),
    (dict(optimizer_slots=-1), r"optimizer_slots must be an integer >= 0"),
])
def test_cost_report_rejects(specs, bad, message):
    with pytest.raises(ValueError, match=message):
        cost_report(specs, **(GOOD | bad))


def test_memory_bytes_rejects_bad_bits(specs):
    with pytest.raises(ValueError, match="lr_bits"):
        memory_bytes(specs, 19, 1500, 32)


def test_bits_boundaries_are_accepted(specs):
    for bits in (1, 16, None):
        assert cost_report(specs, **(GOOD | dict(lr_bits=bits)))["config"]["lr_bits"] == bits
