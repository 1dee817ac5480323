"""The vectorized sweep (K bit-widths x S seeds in one program) against separate runs of the same configurations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clq.model import fold_batch_norm, init_params, mobilenet_v1_specs, split_specs
from clq.quant import make_latent_codec
from clq.replay import make_replay_buffer
from clq.train import (TrainConfig, evaluate, jit_count_hits, make_hits, make_learning_event, make_optimizer,
                       minibatch_composition, pad_eval_latents)
from clq.train.vectorized import SweepData, lr_scales, make_sweep

LAYER, CLASSES, N_LR, EVENTS, N_NEW, N0, TEST, CHUNK = 25, 6, 24, 4, 12, 30, 40, 20
FROZEN_SCALE = np.float32(0.02)
A_MAX = float(FROZEN_SCALE) * 255


@pytest.fixture(scope="module")
def setup():
    specs = mobilenet_v1_specs(0.25, 16, CLASSES)
    params, stats = init_params(specs, jax.random.PRNGKey(0))
    _, adaptive = split_specs(specs, LAYER)
    shape = adaptive[0].in_shape
    rng = np.random.default_rng(0)

    def latents(*lead):
        """Codes that carry their label in channel 0, so that learning shows up in the accuracy."""
        labels = rng.integers(0, CLASSES, lead).astype(np.int32)
        codes = rng.integers(0, 60, (*lead, *shape)).astype(np.uint8)
        codes[..., 0] += (labels * 30).astype(np.uint8)[..., None, None]
        return codes, labels

    codes0, labels0 = latents(N0)
    codes, labels = latents(EVENTS - 1, N_NEW)
    test, test_labels = latents(TEST)
    event_n = np.full(EVENTS - 1, N_NEW, np.int32)
    event_n[1] = N_NEW - 1  # a padded row, same composition: round(16*11/35) = round(16*12/36) = 5 new
    data = SweepData(codes0, labels0, codes, labels, event_n, test, test_labels, FROZEN_SCALE)
    comp = minibatch_composition(N_NEW, N_LR, 16)
    assert comp == minibatch_composition(N_NEW - 1, N_LR, 16)
    opt = make_optimizer(0.05, 0.9, 5e-4)
    return fold_batch_norm(specs, params, stats)[LAYER + 1 :], adaptive, shape, data, comp, opt


def _decode(codes):
    return jnp.asarray(codes, jnp.float32) * FROZEN_SCALE


def _accuracy(count, params, data: SweepData) -> float:
    """Test accuracy the way `run_continual` evaluates (`clq.train.evaluate`); `count`: `_counter`."""
    labels = np.asarray(data.test_labels)
    test = pad_eval_latents(np.asarray(data.test_codes), labels, None, CHUNK)
    return evaluate(count, params, FROZEN_SCALE, test, labels, np.zeros(TEST, np.int32))["accuracy"]


def _counter(adaptive):
    return jit_count_hits(make_hits(adaptive, CLASSES, 1), CHUNK)


def _separate_runs(params, adaptive, shape, data: SweepData, comp, opt, bits, seeds):
    """Each seed's run the way `run_continual` runs its learning events (one jitted call per event)."""
    buffer = make_replay_buffer(N_LR, shape, make_latent_codec(bits, A_MAX), "ar1", CLASSES)
    fns = jax.jit(buffer.add), make_learning_event(adaptive, opt, buffer, comp, 2)
    count = _counter(adaptive)
    return [_separate_run(params, data, opt, buffer, *fns, count, seed) for seed in seeds]


def _separate_run(params, data: SweepData, opt, buffer, add, event, count, seed):
    _, k_train, k_buf = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = jax.tree.map(jnp.array, params)
    opt_state = opt.init(params)
    state = add(buffer.init(), _decode(data.codes0), jnp.asarray(data.labels0), jnp.ones(N0, bool),
                jax.random.fold_in(k_buf, 0))
    accs = [_accuracy(count, params, data)]
    for i in range(1, EVENTS):
        x, y, n = _decode(data.event_codes[i - 1]), jnp.asarray(data.event_labels[i - 1]), int(data.event_n[i - 1])
        params, opt_state, _, _ = event(params, opt_state, x, y, jnp.int32(n), state, jax.random.fold_in(k_train, i))
        state = add(state, x, y, jnp.arange(N_NEW) < n, jax.random.fold_in(k_buf, i))
        accs.append(_accuracy(count, params, data))
    hist = np.bincount(np.asarray(state.labels)[np.asarray(state.filled)], minlength=CLASSES)
    return np.asarray(accs), hist


def _learner_run(learner, params, data: SweepData, opt, adaptive, seed, composition_of):
    """One seed's run through the single run's jitted learner step (`clq.learn`), event by event.

    composition_of(n_new) -> the mini-batch composition the single run compiles for that event.
    Returns (accuracy after every event [EVENTS], loss of the last step of every learning event [EVENTS-1]).
    """
    from clq.learn import Event, Hyper

    count = _counter(adaptive)
    _, k_train, k_buf = jax.random.split(jax.random.PRNGKey(seed), 3)
    hyper = Hyper(opt.init(params).hyperparams["learning_rate"], k_train, k_buf)
    state = learner.init(jax.tree.map(jnp.array, params), (),
                         Event(_decode(data.codes0), jnp.asarray(data.labels0), jnp.int32(N0), jnp.int32(0)), hyper)
    accs, losses = [_accuracy(count, state.params, data)], []
    for i in range(1, EVENTS):
        n = int(data.event_n[i - 1])
        ev = Event(_decode(data.event_codes[i - 1]), jnp.asarray(data.event_labels[i - 1]), jnp.int32(n), jnp.int32(i))
        state, m = learner.jit_step(composition_of(n))(state, ev, hyper)
        accs.append(_accuracy(count, state.params, data))
        losses.append(float(m.loss[-1]))
    return accs, losses


@pytest.mark.parametrize("members_per_batch", [None, 3])
def test_sweep_equals_separate_runs_and_compiles_once(setup, members_per_batch):
    """All 4 configurations vmapped together, or in a `lax.map` over batches of 3 (a full one and a remainder)."""
    params, adaptive, shape, data, comp, opt = setup
    sweep = make_sweep(adaptive, opt, N_LR, shape, CLASSES, comp, epochs=2, max_bits=8, eval_chunk=CHUNK,
                       members_per_batch=members_per_batch)
    bits, seeds = [8, 3], [0, 5]
    res = sweep(params, np.asarray(bits, np.int32), lr_scales(bits, A_MAX), np.asarray(seeds, np.int32), data)
    assert res.accuracy.shape == (2, 2, EVENTS) and res.accuracy.dtype == jnp.float32
    assert res.train_loss.shape == (2, 2, EVENTS - 1)
    for k, b in enumerate(bits):
        for s, (acc, hist) in enumerate(_separate_runs(params, adaptive, shape, data, comp, opt, b, seeds)):
            seed = seeds[s]
            np.testing.assert_allclose(np.asarray(res.accuracy[k, s]), acc, atol=1e-6, err_msg=f"bits={b} seed={seed}")
            np.testing.assert_array_equal(np.asarray(res.buffer_histogram[k, s]), hist)
    assert np.all(np.asarray(res.buffer_histogram).sum(-1) == N_LR)  # event 0 filled the buffer
    # Seeds and bit-widths change the outcome: the configurations are not copies of one another.
    assert not np.array_equal(np.asarray(res.train_loss[0, 0]), np.asarray(res.train_loss[0, 1]))
    assert not np.array_equal(np.asarray(res.train_loss[0, 0]), np.asarray(res.train_loss[1, 0]))
    # Other bit-widths and seeds (same K, S) are traced values: no recompilation.
    sweep(params, np.asarray([7, 6], np.int32), lr_scales([7, 6], A_MAX), np.asarray([1, 2], np.int32), data)
    assert sweep.program.init._cache_size() == 1 and sweep.program.run._cache_size() == 1


def test_lr_scales_match_the_codec():
    for b in (1, 6, 8, 12, 16):
        assert lr_scales([b], 3.7)[0] == make_latent_codec(b, 3.7).scale
    with pytest.raises(ValueError, match="replay.bits"):
        lr_scales([17], 1.0)


def test_sweep_runs_ar1_star_with_fresh_momentum_like_the_single_run_learner(setup):
    """CWR* and a fresh optimizer state per event are learner pieces: the sweep's members equal the single
    run's jitted learner step, event by event."""
    from clq.learn import make_learner, make_strategy
    from clq.train import make_adaptive_norm

    params, adaptive, shape, data, comp, opt = setup
    strategy = make_strategy("ar1star", True, opt.init, CLASSES)
    norm = make_adaptive_norm("fold", adaptive)
    sweep = make_sweep(adaptive, opt, N_LR, shape, CLASSES, comp, epochs=2, max_bits=8, eval_chunk=CHUNK,
                       strategy=strategy, norm=norm)
    bits, seeds = [8], [0, 5]
    res = sweep(params, np.asarray(bits, np.int32), lr_scales(bits, A_MAX), np.asarray(seeds, np.int32), data)
    buffer = make_replay_buffer(N_LR, shape, make_latent_codec(8, A_MAX), "ar1", CLASSES)
    learner = make_learner(adaptive, opt, buffer, norm, strategy, 2)
    for s, seed in enumerate(seeds):
        accs, _ = _learner_run(learner, params, data, opt, adaptive, seed, lambda n: comp)
        np.testing.assert_allclose(np.asarray(res.accuracy[0, s]), accs, atol=1e-6, err_msg=f"seed={seed}")
    # CWR* changes the outcome against plain QLR with the same data and keys.
    plain_res = make_sweep(adaptive, opt, N_LR, shape, CLASSES, comp, epochs=2, max_bits=8, eval_chunk=CHUNK)(
        params, np.asarray(bits, np.int32), lr_scales(bits, A_MAX), np.asarray(seeds, np.int32), data)
    assert not np.array_equal(np.asarray(plain_res.train_loss), np.asarray(res.train_loss))


def test_events_of_unequal_sizes_run_in_one_masked_program_like_the_single_run(setup):
    """Sizes 12 and 10 share the split (5 new + 11 replays) but not the iterations per epoch (3 and 2): the sweep
    runs one program with masked steps and equals the single run, which compiles each composition."""
    from clq.learn import make_learner, plain
    from clq.train import make_adaptive_norm
    from clq.train.vectorized import shared_composition

    params, adaptive, shape, data, _, opt = setup
    event_n = np.asarray([N_NEW, N_NEW - 2, N_NEW], np.int32)
    data = data._replace(event_n=event_n)
    comp, masked = shared_composition(event_n.tolist(), N_LR, 16)
    assert masked and comp == minibatch_composition(N_NEW, N_LR, 16)
    assert minibatch_composition(N_NEW - 2, N_LR, 16).iterations_per_epoch < comp.iterations_per_epoch
    sweep = make_sweep(adaptive, opt, N_LR, shape, CLASSES, comp, epochs=2, max_bits=8, eval_chunk=CHUNK,
                       masked=True)
    res = sweep(params, np.asarray([8], np.int32), lr_scales([8], A_MAX), np.asarray([0], np.int32), data)

    buffer = make_replay_buffer(N_LR, shape, make_latent_codec(8, A_MAX), "ar1", CLASSES)
    learner = make_learner(adaptive, opt, buffer, make_adaptive_norm("fold", adaptive), plain(), 2)
    accs, losses = _learner_run(learner, params, data, opt, adaptive, 0, lambda n: minibatch_composition(n, N_LR, 16))
    np.testing.assert_allclose(np.asarray(res.accuracy[0, 0]), accs, atol=1e-6)
    np.testing.assert_allclose(np.asarray(res.train_loss[0, 0]), losses, rtol=1e-5)
    # Unmasked, the short event would run the long event's steps: a different learning phase.
    unmasked = make_sweep(adaptive, opt, N_LR, shape, CLASSES, comp, epochs=2, max_bits=8, eval_chunk=CHUNK)(
        params, np.asarray([8], np.int32), lr_scales([8], A_MAX), np.asarray([0], np.int32), data)
    assert not np.allclose(np.asarray(unmasked.train_loss[0, 0]), losses, rtol=1e-5)
