import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clq.quant import make_latent_codec
from clq.replay import make_replay_buffer

SHAPE = (2, 3)


def _event(rng, n, n_max, classes, num_classes=6):
    x = rng.uniform(0, 4, (n_max, *SHAPE)).astype(np.float32)
    y = rng.choice(classes, n_max).astype(np.int32)
    valid = np.arange(n_max) < n
    # Padding rows carry a sentinel label that must never enter the buffer.
    y[~valid] = num_classes - 1
    return x, y, valid


@settings(max_examples=15, deadline=None)
@given(policy=st.sampled_from(["ar1", "reservoir", "class_balanced"]), size=st.integers(1, 12),
       sizes=st.lists(st.integers(1, 9), min_size=1, max_size=5), bits=st.sampled_from([None, 3, 8, 12]),
       seed=st.integers(0, 1000))
def test_buffer_never_returns_unwritten_slots(policy, size, sizes, bits, seed):
    rng = np.random.default_rng(seed)
    codec = make_latent_codec(bits, 4.0)
    buf = make_replay_buffer(size, SHAPE, codec, policy, num_classes=6)
    state = buf.init()
    written = []
    for i, n in enumerate(sizes):
        x, y, valid = _event(rng, n, 9, [0, 1, 2, 3, 4])
        state = buf.add(state, x, y, valid, jax.random.PRNGKey(seed + i))
        written.append(np.asarray(codec.decode(codec.encode(x[valid]))))
        assert state.latents.dtype == codec.dtype and state.labels.dtype == jnp.int32
    filled = np.asarray(state.filled)
    assert filled.sum() == min(size, sum(sizes))
    assert set(np.asarray(state.labels)[filled]) <= {0, 1, 2, 3, 4}  # never padding, never empty (-1)
    assert np.all(np.asarray(state.labels)[~filled] == -1)
    xs, ys = buf.sample(state, jax.random.PRNGKey(99), 64)
    assert np.all(np.asarray(ys) >= 0)
    seen = np.concatenate(written).reshape(-1, int(np.prod(SHAPE)))
    for row in np.asarray(xs).reshape(64, -1):  # every sample is a latent that was really added
        assert np.any(np.all(np.isclose(seen, row), axis=1))


def test_ar1_rule_overwrites_h_slots():
    codec = make_latent_codec(8, 255.0)
    N, n = 1500, 300
    buf = make_replay_buffer(N, (1,), codec, "ar1", num_classes=400)
    add = jax.jit(buf.add)
    state = buf.init()
    # Event 0 (3000 new) fills the buffer.
    x0 = np.zeros((3000, 1), np.float32)
    state = add(state, x0, np.zeros(3000, np.int32), np.ones(3000, bool), jax.random.PRNGKey(0))
    assert int(state.filled.sum()) == N and int(state.events) == 1
    add_n = jax.jit(buf.add)
    compiled = None
    for i in range(1, 8):
        label = i
        x = np.full((n, 1), float(i), np.float32)
        before = np.asarray(state.labels).copy()
        state = add_n(state, x, np.full(n, label, np.int32), np.ones(n, bool), jax.random.PRNGKey(i))
        changed = np.sum(np.asarray(state.labels) != before)
        assert changed == min(N // (i + 1), n), i  # h = min(N // (i+1), n_new)
        compiled = compiled or add_n._cache_size()
        assert add_n._cache_size() == compiled  # same shapes: compiled once, never again


def test_class_balanced_keeps_equal_shares():
    codec = make_latent_codec(None, 1.0)
    buf = make_replay_buffer(60, (1,), codec, "class_balanced", num_classes=6)
    add = jax.jit(buf.add)
    state = buf.init()
    rng = np.random.default_rng(0)
    # Heavily imbalanced stream: class 0 gets 200 latents, later classes 30 each.
    for i, (c, n) in enumerate([(0, 200), (1, 30), (2, 30), (3, 30)]):
        x = rng.uniform(size=(200, 1)).astype(np.float32)
        state = add(state, x, np.full(200, c, np.int32), np.arange(200) < n, jax.random.PRNGKey(i))
    counts = np.bincount(np.asarray(state.labels)[np.asarray(state.filled)], minlength=6)
    assert counts.sum() == 60
    assert counts[:4].min() >= 14 and counts[:4].max() <= 16, counts  # ~60/4 each


def test_reservoir_is_uniform_over_events():
    codec = make_latent_codec(None, 1.0)
    buf = make_replay_buffer(100, (1,), codec, "reservoir", num_classes=10)
    add = jax.jit(buf.add)
    shares = []
    for seed in range(10):
        state = buf.init()
        for e in range(10):
            state = add(state, np.zeros((100, 1), np.float32), np.full(100, e, np.int32), np.ones(100, bool),
                        jax.random.PRNGKey(seed * 100 + e))
        shares.append(np.bincount(np.asarray(state.labels), minlength=10))
    mean = np.mean(shares, axis=0)
    assert int(state.seen) == 1000
    assert np.all(np.abs(mean - 10) < 4), mean  # each event keeps ~N/10 slots in expectation


def test_empty_buffer_and_validation():
    codec = make_latent_codec(8, 1.0)
    buf = make_replay_buffer(0, SHAPE, codec, "ar1")
    st = buf.add(buf.init(), np.ones((3, *SHAPE), np.float32), np.zeros(3, np.int32), np.ones(3, bool), jax.random.PRNGKey(0))
    assert st.latents.shape == (0, *SHAPE) and int(st.seen) == 3
    with pytest.raises(ValueError, match="replay.policy"):
        make_replay_buffer(5, SHAPE, codec, "lifo")
    with pytest.raises(ValueError, match="replay.size"):
        make_replay_buffer(-1, SHAPE, codec, "ar1")
