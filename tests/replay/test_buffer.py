import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clq.quant import make_latent_codec
from clq.replay import buffer_nbytes, make_replay_buffer, packed_words

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
    add = jax.jit(buf.add)  # one compiled program per example instead of hundreds of one-op dispatches per add
    state = buf.init()
    written = []
    for i, n in enumerate(sizes):
        x, y, valid = _event(rng, n, 9, [0, 1, 2, 3, 4])
        state = add(state, x, y, valid, jax.random.PRNGKey(seed + i))
        written.append(np.asarray(codec.decode(codec.encode(x[valid]))))
        assert state.latents.dtype == (jnp.float32 if bits is None else jnp.uint32)  # packed words
        assert state.labels.dtype == jnp.int32
    filled = np.asarray(state.filled)
    assert filled.sum() == min(size, sum(sizes))
    assert set(np.asarray(state.labels)[filled]) <= {0, 1, 2, 3, 4}  # never padding, never empty (-1)
    assert np.all(np.asarray(state.labels)[~filled] == -1)
    xs, ys = jax.jit(buf.sample, static_argnums=2)(state, jax.random.PRNGKey(99), 64)
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
    assert st.latents.shape == (0, packed_words(6, 8)) and int(st.seen) == 3
    assert buf.latent_bytes == 0 and buffer_nbytes(st)["latents"] == 0
    with pytest.raises(ValueError, match="replay.policy"):
        make_replay_buffer(5, SHAPE, codec, "lifo")
    with pytest.raises(ValueError, match="replay.size"):
        make_replay_buffer(-1, SHAPE, codec, "ar1")


def _unpacked_reference(size, shape, codec, policy):
    """The storage before packing: one code per element, unpacked (FP32 slots holding the integer codes)."""
    ref = make_replay_buffer(size, shape, make_latent_codec(None, 1.0), policy, num_classes=6)

    def add(state, x, y, valid, key):
        return ref.add(state, codec.encode(x).astype(jnp.float32), y, valid, key)

    def read(state, slots):
        codes, labels = ref.read(state, slots)
        return codec.decode(codes), labels  # the same decode as the old uint8/uint16 storage

    return ref.init, jax.jit(add), read


@pytest.mark.parametrize("policy", ["ar1", "reservoir", "class_balanced"])
@pytest.mark.parametrize("bits", [1, 3, 7, 8, 12, 16])
def test_packed_storage_decodes_bit_identical_to_unpacked_codes(policy, bits):
    shape = (3, 2, 5)  # 30 codes: E*Q is not a multiple of 32 for most Q
    codec = make_latent_codec(bits, 4.0)
    buf = make_replay_buffer(10, shape, codec, policy, num_classes=6)
    ref_init, ref_add, ref_read = _unpacked_reference(10, shape, codec, policy)
    add = jax.jit(buf.add)
    state, ref = buf.init(), ref_init()
    rng = np.random.default_rng(bits)
    for i, n in enumerate([9, 4, 7, 2, 9, 5]):
        x = rng.uniform(0, 4.5, (9, *shape)).astype(np.float32)  # some above the range: saturated codes
        y = rng.integers(0, 5, 9).astype(np.int32)
        valid = np.arange(9) < n
        state = add(state, x, y, valid, jax.random.PRNGKey(i))
        ref = ref_add(ref, x, y, valid, jax.random.PRNGKey(i))
        assert state.latents.shape == (10, packed_words(30, bits)) and state.latents.dtype == jnp.uint32
    np.testing.assert_array_equal(np.asarray(state.labels), np.asarray(ref.labels))
    np.testing.assert_array_equal(np.asarray(state.filled), np.asarray(ref.filled))
    slots = jnp.arange(10)
    xs, ys = jax.jit(buf.read)(state, slots)
    xr, yr = ref_read(ref, slots)
    assert xs.dtype == jnp.float32 and xs.shape == (10, *shape)
    np.testing.assert_array_equal(np.asarray(xs), np.asarray(xr))  # bit-identical floats
    np.testing.assert_array_equal(np.asarray(ys), np.asarray(yr))
    assert len(np.unique(np.asarray(xs))) > 2 ** min(bits, 4) // 2  # the latents are not all one code
    xs, _ = buf.sample(state, jax.random.PRNGKey(7), 16)
    assert set(np.unique(np.asarray(xs))) <= set(np.unique(np.asarray(xr)))


def test_traced_bits_need_code_bits_and_pack_at_that_width():
    shape = (2, 5)
    x = np.random.default_rng(0).uniform(0, 4, (6, *shape)).astype(np.float32)

    def run(bits):
        codec = make_latent_codec(bits, 4.0)
        traced = codec._replace(bits=jnp.int32(bits), dtype=jnp.uint8)  # as the vectorized sweep builds it
        buf = make_replay_buffer(6, shape, traced, "ar1", num_classes=6, code_bits=8)
        state = buf.add(buf.init(), x, np.zeros(6, np.int32), np.ones(6, bool), jax.random.PRNGKey(0))
        assert state.latents.shape == (6, packed_words(10, 8)) and buf.code_bits == 8
        return np.asarray(buf.read(state, jnp.arange(6))[0])

    for bits in (3, 8):
        codec = make_latent_codec(bits, 4.0)
        buf = make_replay_buffer(6, shape, codec, "ar1", num_classes=6)
        state = buf.add(buf.init(), x, np.zeros(6, np.int32), np.ones(6, bool), jax.random.PRNGKey(0))
        np.testing.assert_array_equal(run(bits), np.asarray(buf.read(state, jnp.arange(6))[0]))
    traced = make_latent_codec(8, 4.0)._replace(bits=jnp.int32(8))
    with pytest.raises(ValueError, match="code_bits"):
        make_replay_buffer(6, shape, traced, "ar1")
    with pytest.raises(ValueError, match="code_bits"):
        make_replay_buffer(6, shape, make_latent_codec(8, 4.0), "ar1", code_bits=7)
    with pytest.raises(ValueError, match="code_bits"):
        make_replay_buffer(6, shape, make_latent_codec(None, 4.0), "ar1", code_bits=8)


@pytest.mark.parametrize("bits", [None, 1, 5, 8, 16])
def test_ram_bytes(bits):
    shape = (3, 7)  # 21 elements
    buf = make_replay_buffer(11, shape, make_latent_codec(bits, 4.0), "ar1", num_classes=6)
    state = buf.init()
    per_latent = 4 * (21 if bits is None else -(-21 * bits // 32))
    assert buf.latent_bytes == 11 * per_latent
    nb = buffer_nbytes(state)
    assert nb["latents"] == buf.latent_bytes == state.latents.nbytes
    assert nb["labels"] == 11 * 4 and nb["bookkeeping"] == 11 + 4 + 4 + 6 * 4  # filled, seen, events, class_seen
    assert nb["total"] == sum(a.nbytes for a in state)
    assert buffer_nbytes(jax.eval_shape(buf.init)) == nb


def test_packed_ram_equals_cost_model_at_paper_scale():
    """RAM of the packed latents == the cost model's LR buffer minus its FP32 scale (l=19, N=1500, Q=1..16)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from clq.config import experiment_config
    from clq.cost import memory_bytes
    from clq.model import split_specs

    conf = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "conf"))
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose("config", overrides=["model=mobilenet_v1_imagenet", "latent_layer=19", "replay.size=1500"])
    exp = experiment_config(OmegaConf.to_container(cfg, resolve=True))
    assert exp.model.input_size == 128
    specs = exp.model.specs()
    latent_shape = split_specs(specs, 19)[0][-1].out_shape
    assert tuple(latent_shape) == (8, 8, 512)
    for bits in range(1, 17):
        buf = make_replay_buffer(1500, latent_shape, make_latent_codec(bits, 6.0), "ar1", exp.data.num_classes)
        ram = buffer_nbytes(jax.eval_shape(buf.init))["latents"]
        assert ram == buf.latent_bytes
        assert ram == memory_bytes(specs, 19, 1500, bits)["lr_buffer"] - 4, bits
