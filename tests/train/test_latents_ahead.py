"""`latents_ahead`: the later events' latents computed many events per call of the frozen stage, with the codes
one call per event gives, bit for bit, and memory bounded by its budget."""

import jax
import numpy as np
import pytest

from clq.model.forward import fold_batch_norm, init_params
from clq.model.specs import mobilenet_v1_specs
from clq.quant.frozen import QuantConfig
from clq.train.frozen_stage import latents_ahead, make_frozen_stage

SIZE, L = 16, 11


class _Recording:
    """A stand-in frozen stage: latents = the images' channel sums [N, 3] (uint16); records each call's size."""

    def __init__(self):
        self.calls = []

    def __call__(self, px):
        self.calls.append(len(px))
        return px.astype(np.uint16).sum(axis=(1, 2))


def _stream(sizes, seed=0):
    images = np.random.default_rng(seed).integers(0, 256, (sum(sizes), 4, 4, 3), dtype=np.uint8)
    order = np.random.default_rng(seed + 1).permutation(len(images))  # events draw scattered images
    bounds = np.cumsum([0, *sizes])
    return images, [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def test_each_event_gets_its_own_images_latents_in_order():
    images, events = _stream([5, 3, 7, 1, 4])
    fn = _Recording()
    out = list(latents_ahead(fn, images, events, latent_bytes=6, budget=10**6))
    assert len(out) == len(events)
    for idx, codes in zip(events, out):
        np.testing.assert_array_equal(codes, _Recording()(images[idx]))
    assert fn.calls == [20]  # every event in one call when the budget allows


def test_calls_stay_within_the_budget_and_take_at_least_one_event():
    images, events = _stream([4, 4, 4, 9, 2, 2])
    fn = _Recording()
    # 8 images of 48 pixel bytes and 6 code bytes fit the budget: events pack into calls of <= 8 images; the
    # 9-image event, larger than the budget on its own, still gets a call of its own.
    out = list(latents_ahead(fn, images, events, latent_bytes=6, budget=8 * 54))
    assert fn.calls == [8, 4, 9, 4]
    assert [len(c) for c in out] == [4, 4, 4, 9, 2, 2]
    assert list(latents_ahead(fn, images, [], latent_bytes=6)) == []


def test_nothing_is_computed_before_it_is_asked_for():
    images, events = _stream([3, 3, 3])
    fn = _Recording()
    ahead = latents_ahead(fn, images, events, latent_bytes=6, budget=6 * 54)  # two events per call
    assert fn.calls == []
    next(ahead)
    assert fn.calls == [6]
    next(ahead)
    next(ahead)
    assert fn.calls == [6, 3]


@pytest.mark.parametrize("quant", [QuantConfig(), None], ids=["8-bit", "fp32"])
def test_a_real_frozen_stage_gives_the_codes_of_one_call_per_event(quant):
    specs = tuple(mobilenet_v1_specs(0.25, SIZE, 4))[: L + 1]
    params, stats = init_params(specs, jax.random.PRNGKey(0))
    folded = fold_batch_norm(specs, params, stats)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (200, SIZE, SIZE, 3), dtype=np.uint8)
    frozen = make_frozen_stage(specs, folded, images[:40], quant, batch_size=32)
    # Events of uneven sizes, so that windows and per-event calls pad their batches differently.
    events = np.split(rng.permutation(len(images)), [7, 40, 41, 90, 133])
    ahead = latents_ahead(frozen.latents, images, events, frozen.latents(images[:1])[0].nbytes)
    for idx, codes in zip(events, ahead, strict=True):
        np.testing.assert_array_equal(codes, frozen.latents(images[idx]))


def test_a_call_holds_pixels_and_codes_within_the_budget():
    """The budget bounds decoded pixels too (lazy CORe50 images are decoded per call), not only the codes: 48-byte
    images with 1-byte codes, a budget of 100 bytes, two images per call where the codes alone would allow 100."""
    images, events = _stream([2, 2, 2])
    fn = _Recording()
    out = list(latents_ahead(fn, images, events, latent_bytes=1, budget=100))
    assert fn.calls == [2, 2, 2] and [len(c) for c in out] == [2, 2, 2]
