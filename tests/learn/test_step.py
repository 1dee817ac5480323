"""The learner: one pure step that a run jits (state donated, compiled once) and a sweep vmaps; strategies are
composable pieces."""

import jax
import jax.numpy as jnp
import numpy as np

from clq.learn import Event, Hyper, chain, cwr_star, fresh_momentum, make_learner, make_strategy, plain
from clq.model import fold_batch_norm, init_params, mobilenet_v1_specs, split_specs
from clq.quant import make_latent_codec
from clq.replay import make_replay_buffer
from clq.train import make_adaptive_norm, make_optimizer, minibatch_composition
from clq.train.cwr import cwr_apply

K, L, N = 6, 23, 40


def _learner(strategy_name="qlr", reset=False):
    specs = mobilenet_v1_specs(0.25, 32, K)
    params, stats = init_params(specs, jax.random.PRNGKey(0))
    folded = fold_batch_norm(specs, params, stats)
    _, adaptive = split_specs(specs, L)
    shape = adaptive[0].in_shape
    buf = make_replay_buffer(N, shape, make_latent_codec(8, 4.0), "ar1", K)
    opt = make_optimizer(0.05, 0.9, 5e-4)
    strategy = make_strategy(strategy_name, reset, opt.init, K)
    learner = make_learner(adaptive, opt, buf, make_adaptive_norm("fold", adaptive), strategy, epochs=2)
    return learner, folded[L + 1 :], shape


def _event(rng, shape, i, n=20, n_max=20, classes=(0, 1)):
    x = np.zeros((n_max, *shape), np.float32)
    x[:n] = rng.uniform(0, 4, (n, *shape))
    y = np.zeros(n_max, np.int32)
    y[:n] = rng.choice(classes, n)
    return Event(jnp.asarray(x), jnp.asarray(y), jnp.int32(n), jnp.int32(i))


def _hyper(seed, lr=0.05):
    _, k_train, k_buf = jax.random.split(jax.random.PRNGKey(seed), 3)
    return Hyper(jnp.float32(lr), k_train, k_buf)


def test_jitted_step_compiles_once_keeps_dtypes_and_learns():
    learner, params, shape = _learner()
    rng = np.random.default_rng(0)
    state = learner.init(params, (), _event(rng, shape, 0, n=N, n_max=N), _hyper(0))
    assert int(np.asarray(state.buffer.filled).sum()) == N
    comp = minibatch_composition(20, N, 16)
    step = learner.jit_step(comp)
    dtypes = jax.tree.map(lambda a: a.dtype, state)
    losses = []
    for i in range(1, 4):
        # 19 or 20 valid rows and a new learning rate: the same compiled step
        state, m = step(state, _event(rng, shape, i, n=20 - (i % 2), classes=(i % K,)), _hyper(0, 0.05 / i))
        losses.append(np.asarray(m.loss))
        assert jax.tree.map(lambda a: a.dtype, state) == dtypes
    assert step._cache_size() == 1
    assert learner.jit_step(comp) is step
    assert losses[0][-1] < losses[0][0]


def test_vmapped_step_equals_one_step_per_member():
    """What a sweep does: vmap the same step over members' keys and learning rates."""
    learner, params, shape = _learner()
    rng = np.random.default_rng(1)
    ev0, ev1 = _event(rng, shape, 0, n=N, n_max=N), _event(rng, shape, 1)
    comp = minibatch_composition(20, N, 16)
    hypers = [_hyper(0, 0.05), _hyper(3, 0.01)]
    singles = [learner.step(comp)(learner.init(params, (), ev0, h), ev1, h)[0] for h in hypers]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *hypers)
    batched, _ = jax.vmap(lambda h: learner.step(comp)(learner.init(params, (), ev0, h), ev1, h))(stacked)
    for j, single in enumerate(singles):
        for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(batched)):
            np.testing.assert_allclose(np.asarray(b[j], np.float64), np.asarray(a, np.float64), rtol=1e-5, atol=1e-6)
    # The members differ: the keys and rates are really traced per member.
    assert not np.allclose(np.asarray(batched.params[-1]["w"][0]), np.asarray(batched.params[-1]["w"][1]))


def test_cwr_star_piece_leaves_the_consolidated_classifier_and_unseen_classes_at_zero():
    learner, params, shape = _learner("ar1star")
    rng = np.random.default_rng(2)
    state = learner.init(params, (), _event(rng, shape, 0, n=N, n_max=N, classes=(0, 1)), _hyper(0))
    state, _ = learner.step(minibatch_composition(20, N, 16))(state, _event(rng, shape, 1, classes=(2,)), _hyper(0))
    (cwr,) = state.strategy
    seen = np.asarray(cwr.seen)
    assert list(seen) == [True, True, True, False, False, False]
    head = state.params[-1]
    np.testing.assert_array_equal(np.asarray(head["w"]), np.asarray(cwr_apply(head, cwr)["w"]))
    assert np.all(np.asarray(head["w"])[:, ~seen] == 0) and np.any(np.asarray(head["w"])[:, seen] != 0)


def test_fresh_momentum_piece_restarts_the_optimizer_state():
    learner, params, shape = _learner("qlr", reset=True)
    rng = np.random.default_rng(3)
    ev0, ev1 = _event(rng, shape, 0, n=N, n_max=N), _event(rng, shape, 1)
    comp = minibatch_composition(20, N, 16)
    state = learner.init(params, (), ev0, _hyper(0))
    # A state carrying momentum from elsewhere: the step must ignore it and start from zero.
    noisy = state._replace(opt_state=jax.tree.map(lambda a: a + 1.0 if a.dtype == jnp.float32 and a.ndim else a,
                                                  state.opt_state))
    a, _ = learner.step(comp)(state, ev1, _hyper(0))
    b, _ = learner.step(comp)(noisy, ev1, _hyper(0))
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_chain_runs_pieces_in_order_with_their_own_state():
    calls = []

    def piece(name):
        def before(state, s, event):
            calls.append(("before", name))
            return state, s + 1

        def after(state, s, event):
            calls.append(("after", name))
            return state, s * 10

        return plain()._replace(init=lambda params: 0, before=before, after=after)

    strat = chain(piece("a"), piece("b"))
    s = strat.init(None)
    _, s = strat.before(None, s, None)
    _, s = strat.after(None, s, None)
    assert s == (10, 10) and calls == [("before", "a"), ("before", "b"), ("after", "a"), ("after", "b")]
    states = chain(fresh_momentum(lambda p: ()), cwr_star(K)).init(({"w": jnp.zeros((4, K))},))
    assert states[0] == () and states[1].consolidated.shape == (K, 4)
