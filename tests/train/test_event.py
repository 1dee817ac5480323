import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clq.model import fold_batch_norm, init_params, mobilenet_v1_specs, split_specs
from clq.quant import make_latent_codec
from clq.replay import make_replay_buffer
from clq.train import (
    forgetting, make_learning_event, make_optimizer, minibatch_composition, set_learning_rate,
)


def test_paper_minibatch_composition():
    assert minibatch_composition(300, 1500, 128) == (21, 107, 15)  # 21 new + 107 replays, 15 iterations/epoch
    assert minibatch_composition(293, 1500, 128) == (21, 107, 14)
    assert minibatch_composition(300, 0, 128) == (128, 0, 3)  # no replay: all new
    assert minibatch_composition(300, 3000, 128).new_per_batch == 12
    assert minibatch_composition(6, 1500, 128) == (1, 127, 6)  # 128 * 6 / 1506 = 0.51 rounds up to one new sample
    # 128 * 4 / 1504 = 0.34: no new sample fits (it used to be raised to one silently; clq.config refused it)
    with pytest.raises(ValueError, match=r"train.batch_size=128 with replay.size=1500 .* leaves 0 new samples"):
        minibatch_composition(4, 1500, 128)
    with pytest.raises(ValueError, match="train.batch_size"):
        minibatch_composition(300, 1500, 0)
    # Never a new sample twice in a mini-batch: at most n_new are new (the cost model counted so; the events
    # used to repeat new samples to fill round(B n/(n+N)) > n_new, or all B with no replay).
    assert minibatch_composition(20, 10, 128) == (20, 108, 1)
    assert minibatch_composition(20, 0, 128) == (20, 0, 1)


def _setup(latent_layer=23, buffer_size=40, policy="ar1", epochs=2):
    specs = mobilenet_v1_specs(0.25, 32, 6)
    params, stats = init_params(specs, jax.random.PRNGKey(0))
    folded = fold_batch_norm(specs, params, stats)
    _, adaptive = split_specs(specs, latent_layer)
    shape = adaptive[0].in_shape
    buf = make_replay_buffer(buffer_size, shape, make_latent_codec(8, 4.0), policy, 6)
    opt = make_optimizer(0.05, 0.9, 5e-4)
    p = folded[latent_layer + 1 :]
    comp = minibatch_composition(20, buffer_size, 16)
    fn = make_learning_event(adaptive, opt, buf, comp, epochs)
    return p, opt, buf, fn, shape, comp


def test_learning_event_compiles_once_and_learns():
    params, opt, buf, fn, shape, comp = _setup()
    rng = np.random.default_rng(0)
    state = buf.init()
    x0 = rng.uniform(0, 4, (40, *shape)).astype(np.float32)
    y0 = rng.integers(0, 6, 40).astype(np.int32)
    state = buf.add(state, x0, y0, np.ones(40, bool), jax.random.PRNGKey(0))
    opt_state = opt.init(params)
    losses = []
    dtypes = jax.tree.map(lambda a: a.dtype, (params, opt_state))
    for i in range(4):
        n = 20 - (i % 2)  # 19 or 20 valid rows, same padded shape and composition
        x = np.zeros((20, *shape), np.float32)
        x[:n] = rng.uniform(0, 4, (n, *shape))
        y = np.zeros(20, np.int32)
        y[:n] = i % 6
        opt_state = set_learning_rate(opt_state, 0.05 / (i + 1))  # changing the LR does not recompile
        params, opt_state, m, _ = fn(params, opt_state, jnp.asarray(x), jnp.asarray(y), jnp.int32(n), state,
                                  jax.random.PRNGKey(i))
        assert m.loss.shape == (2 * comp.iterations_per_epoch,)
        losses.append(np.asarray(m.loss))
        assert jax.tree.map(lambda a: a.dtype, (params, opt_state)) == dtypes
    assert fn._cache_size() == 1
    assert np.all(np.isfinite(np.concatenate(losses)))
    assert losses[0][-1] < losses[0][0]  # training reduces the loss within an event


def test_forgetting_metric():
    acc = np.array([[0.9, np.nan], [0.5, 0.8], [0.6, 0.7]])
    seen = np.array([[True, False], [True, True], [True, True]])
    assert forgetting(acc, seen) == pytest.approx(((0.9 - 0.6) + (0.8 - 0.7)) / 2)
    assert forgetting(acc[:1], seen[:1]) == 0.0
