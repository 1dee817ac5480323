"""Normalization pieces: batch renormalization's limits, frozen statistics, folding, and the AR1 schedule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clq.model import fold_batch_norm, forward, forward_bn, init_params, mobilenet_v1_specs, split_specs
from clq.model.forward import batch_renorm, forward_norm
from clq.train.metrics import at_chance
from clq.train.norm import ar1_first_event_schedule, make_adaptive_norm


def _stage(seed=0):
    specs = mobilenet_v1_specs(0.25, 16, 5, 3, "relu6")
    params, stats = init_params(specs, jax.random.PRNGKey(seed))
    # Non-trivial running statistics, so that batch and running statistics differ.
    k = jax.random.PRNGKey(seed + 1)
    stats = tuple({"mean": 0.3 * jax.random.normal(jax.random.fold_in(k, i), s["mean"].shape),
                   "var": 0.5 + jax.random.uniform(jax.random.fold_in(k, 100 + i), s["var"].shape)} if s else {}
                  for i, s in enumerate(stats))
    x = jax.random.uniform(jax.random.fold_in(k, 7), (8, 16, 16, 3))
    return specs, params, stats, x


def test_renorm_without_slack_is_batch_norm_and_frozen_is_inference():
    specs, params, stats, x = _stage()
    ref_train, batch = forward_bn(specs, params, stats, x, train=True)
    out, _ = forward_norm(specs, params, stats, x, (False,) * len(specs), 0.1, 1.0, 0.0)
    np.testing.assert_allclose(out, ref_train, rtol=1e-3, atol=5e-4)  # (y-m)/s vs (y-m)*rsqrt(v), over 28 layers
    ref_inf, _ = forward_bn(specs, params, stats, x, train=False)
    out, new = forward_norm(specs, params, stats, x, (True,) * len(specs), 0.1, 1.25, 0.5)
    np.testing.assert_allclose(out, ref_inf, rtol=1e-4, atol=1e-5)
    assert all(jnp.array_equal(a, b) for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(stats)))
    # Folding the running statistics gives the inference network.
    np.testing.assert_allclose(forward(specs, fold_batch_norm(specs, params, stats), x), ref_inf, rtol=1e-4, atol=1e-4)


def test_batch_renorm_clips_r_and_d_and_moves_running_statistics():
    y = jnp.asarray(np.random.default_rng(0).normal(3.0, 4.0, (256, 6)), jnp.float32)
    running = {"mean": jnp.zeros(6), "var": jnp.ones(6)}
    x_hat, new = batch_renorm(y, running, False, 0.01, 1.25, 0.5, eps=0.0)
    m, s = jnp.mean(y, 0), jnp.std(y, 0)
    # s/sigma ~ 4 > r_max: r = 1.25; (m - mu)/sigma ~ 3 > d_max: d = 0.5.
    np.testing.assert_allclose(x_hat, (y - m) / s * 1.25 + 0.5, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new["mean"], 0.01 * m, rtol=1e-5)
    np.testing.assert_allclose(new["var"], 0.99 + 0.01 * s**2, rtol=1e-5)
    # No gradient flows through r and d: the gradient is the one of (y - m_B)/s_B scaled by r.
    g = jax.grad(lambda y: jnp.sum(batch_renorm(y, running, False, 0.01, 1.25, 0.5, eps=0.0)[0] ** 2))(y)
    g_bn = jax.grad(lambda y: jnp.sum(((y - jnp.mean(y, 0)) / jnp.std(y, 0) * 1.25 + 0.5) ** 2))(y)
    np.testing.assert_allclose(g, g_bn, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["fold", "bn", "brn"])
def test_adaptive_norm_trains_and_folds_for_evaluation(name):
    specs, params, stats, x = _stage()
    _, adaptive = split_specs(specs, 23)
    lat = forward(specs[:24], fold_batch_norm(specs[:24], params[:24], stats[:24]), x)
    norm = make_adaptive_norm(name, adaptive, momentum=0.1)
    p, st = norm.init(params[24:], stats[24:])
    out, st2 = jax.jit(norm.apply)(p, st, lat)
    assert out.shape == (8, 5)
    folded = norm.fold(p, st)
    inference, _ = forward_bn(adaptive, params[24:], stats[24:], lat, False)
    np.testing.assert_allclose(forward(adaptive, folded, lat), inference, rtol=1e-4, atol=1e-4)
    if name == "fold":
        assert st == () and st2 == ()
    else:
        moved = [not jnp.allclose(a, b) for a, b in zip(jax.tree.leaves(st), jax.tree.leaves(st2))]
        assert any(moved)


def test_ar1_first_event_schedule_grows_to_its_limits():
    sched = ar1_first_event_schedule(128)
    assert sched.limits(0) == (1.0, 0.0)
    r, d = sched.limits(10)
    np.testing.assert_allclose((r, d), (1 + 10 * 128 * 4.1e-5, 10 * 128 * 4.1e-5), rtol=1e-6)
    np.testing.assert_allclose(sched.limits(1000), (1.25, 0.5))


def test_at_chance_names_the_event_where_accuracy_collapsed():
    assert at_chance([0.4, 0.5, 0.1, 0.1], 10) is None  # two events only
    assert at_chance([0.4, 0.5, 0.1, 0.1, 0.12], 10) == 2
    assert at_chance([0.4, 0.1, 0.1, 0.1, 0.1], 10) == 1
    assert at_chance([0.4, 0.1, 0.1, 0.5, 0.1], 10) is None
