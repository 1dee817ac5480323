"""clq.model.forward: the sweep benchmark's optimizations (docs/performance.md) must not change any number."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clq.model import LayerSpec, init_params, linear_op, mobilenet_v1_specs
from clq.model.forward import BN_EPS, batch_norm_train, im2col, same_padding


def test_init_params_equals_one_draw_per_layer():
    """`init_params` draws every layer in one compiled program; the values are the per-layer draws."""
    specs = mobilenet_v1_specs(0.25, 16, 6)
    key = jax.random.PRNGKey(7)
    params, _ = init_params(specs, key)
    for i in (0, 1, 2, 28):  # conv, dw, pw, classifier (each eager draw compiles: keep it to these)
        spec, k, p = specs[i], jax.random.split(key, len(specs))[i], params[i]
        if spec.has_params:
            shape = spec.weight_shape
            fan_in = int(np.prod(shape[:-1])) if spec.kind != "dw" else spec.kernel * spec.kernel
            w = jax.random.normal(k, shape, jnp.float32) * np.float32(np.sqrt(2.0 / fan_in))
            if not spec.batch_norm:
                w = w * np.float32(np.sqrt(0.5))
            np.testing.assert_array_equal(np.asarray(p["w"]), np.asarray(w), err_msg=spec.name)


@pytest.mark.parametrize("stride,size", [(2, 16), (2, 15), (1, 8)])
def test_dense_conv_im2col_matches_xla_conv(stride, size):
    out = -(-size // stride)
    spec = LayerSpec(0, "conv1", "conv", 3, stride, (size, size, 3), (out, out, 8), True, "relu")
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, size, size, 3))
    w = jax.random.normal(jax.random.PRNGKey(2), spec.weight_shape)
    pads = (same_padding(size, 3, stride),) * 2
    ref = jax.lax.conv_general_dilated(x, w, (stride, stride), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                       precision=jax.lax.Precision.HIGHEST)
    np.testing.assert_allclose(np.asarray(jax.jit(lambda x, w: linear_op(spec, w, x))(x, w)), np.asarray(ref),
                               rtol=1e-5, atol=1e-5)


def _xla_reference(specs, params, x):
    """Folded forward pass from XLA convolutions on NHWC tensors throughout (no flattened 1x1 rows)."""
    for spec, p in zip(specs, params):
        if spec.kind in ("conv", "dw"):
            pads = (same_padding(x.shape[1], spec.kernel, spec.stride), same_padding(x.shape[2], spec.kernel, spec.stride))
            y = jax.lax.conv_general_dilated(x, p["w"], (spec.stride,) * 2, pads, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                             feature_group_count=x.shape[-1] if spec.kind == "dw" else 1,
                                             precision=jax.lax.Precision.HIGHEST)
        elif spec.kind == "pw":
            y = jnp.einsum("bhwc,cd->bhwd", x, p["w"], precision=jax.lax.Precision.HIGHEST)
        elif spec.kind == "pool":
            y = jnp.mean(x, axis=(1, 2), keepdims=True)
        else:
            y = jnp.dot(x.reshape(x.shape[0], -1), p["w"], precision=jax.lax.Precision.HIGHEST)
        y = y + p["b"] if "b" in p else y
        x = jax.nn.relu(y) if spec.activation == "relu" else y
    return x


@pytest.mark.parametrize("first", [17, 21, 23, 25])
def test_forward_with_small_resolutions_matches_xla_convolutions(first):
    """Layers at 2x2 and 1x1 run on [B*H*W, C] rows (`_linear_op_flat`, `_depthwise`): same values and gradients
    as XLA's own (grouped) convolutions, and a stage ending at a 1x1 layer still returns [B, 1, 1, C]."""
    from clq.model import fold_batch_norm, forward

    specs = mobilenet_v1_specs(0.25, 32, 10)
    params, stats = init_params(specs, jax.random.PRNGKey(0))
    folded = fold_batch_norm(specs, params, stats)
    x = jax.random.uniform(jax.random.PRNGKey(1), (3, *specs[first].in_shape)) * 2
    for stop in (len(specs) - 1, 26):  # to the classifier / a stage ending at a 1x1 pointwise layer
        sub, p = specs[first : stop + 1], folded[first : stop + 1]
        out = forward(sub, p, x)
        assert out.shape == (3, *sub[-1].out_shape) or (sub[-1].kind == "linear" and out.shape == (3, 10))
        np.testing.assert_allclose(np.asarray(out), np.asarray(_xla_reference(sub, p, x)), rtol=1e-5, atol=1e-5)
        g = jax.grad(lambda p: jnp.sum(jnp.sin(forward(sub, p, x))))(p)
        g_ref = jax.grad(lambda p: jnp.sum(jnp.sin(_xla_reference(sub, p, x))))(p)
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("stride,kernel,size,per_pixel",
                         [(s, 3, n, False) for s in (1, 2) for n in (1, 2, 5, 8, 15, 16)]
                         + [(3, 3, 8, False), (3, 3, 5, False), (1, 4, 5, False), (2, 4, 8, False)]
                         # the grids the pixel-by-pixel form takes (at most 4 output pixels, more than 1 input pixel)
                         + [(1, 3, 2, True), (2, 3, 2, True), (2, 3, 3, True), (2, 3, 4, True), (3, 3, 5, True),
                            (2, 4, 4, True), (1, 4, 2, True)])
def test_depthwise_and_its_handwritten_gradient_match_xla_grouped_conv(stride, kernel, size, per_pixel):
    """`_depthwise` has a custom VJP (flipped-kernel correlation for an odd kernel at stride 1, phase by phase
    otherwise): check both gradients against autodiff of XLA's grouped convolution, on odd and even sizes down
    to 1x1, strides 1-3 and an even kernel (asymmetric 'SAME' padding), and with small output grids computed
    pixel by pixel (`per_pixel`: 2x2, 2x2/2, 3x3/2, 4x4/2, 5x5/3, an even kernel)."""
    out = -(-size // stride)
    spec = LayerSpec(1, "dw", "dw", kernel, stride, (size, size, 8), (out, out, 8), True, "relu")
    x = jax.random.normal(jax.random.PRNGKey(1), (2, size, size, 8))
    w = jax.random.normal(jax.random.PRNGKey(2), spec.weight_shape)
    pads = (same_padding(size, kernel, stride),) * 2

    def ref(x, w):
        return jax.lax.conv_general_dilated(x, w, (stride, stride), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                           feature_group_count=8, precision=jax.lax.Precision.HIGHEST)

    def clq(x, w):
        return linear_op(spec, w, x, per_pixel)

    np.testing.assert_allclose(np.asarray(jax.jit(clq)(x, w)), np.asarray(ref(x, w)), rtol=1e-5, atol=1e-5)
    cot = jax.random.normal(jax.random.PRNGKey(3), (2, out, out, 8))
    for a, b in zip(jax.grad(lambda x, w: jnp.sum(clq(x, w) * cot), (0, 1))(x, w),
                    jax.grad(lambda x, w: jnp.sum(ref(x, w) * cot), (0, 1))(x, w)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(4, 5, 5, 6), (16, 6)])
def test_batch_norm_in_training_mode_and_its_written_out_gradient_match_autodiff(shape):
    """`batch_norm_train` has a custom VJP (the closed-form input gradient): its values and the gradients of a loss
    of all three outputs (normalized values, batch mean, batch variance) match autodiff of the textbook form."""
    y = 3.0 + 2.0 * jax.random.normal(jax.random.PRNGKey(0), shape)
    gamma = jax.random.uniform(jax.random.PRNGKey(1), shape[-1:], minval=0.5, maxval=2.0)
    beta = jax.random.normal(jax.random.PRNGKey(2), shape[-1:])
    cot = [jax.random.normal(jax.random.PRNGKey(3 + i), s) for i, s in enumerate((shape, shape[-1:], shape[-1:]))]

    def ref(y, gamma, beta):
        axes = tuple(range(y.ndim - 1))
        mean, var = jnp.mean(y, axis=axes), jnp.var(y, axis=axes)
        return (y - mean) / jnp.sqrt(var + BN_EPS) * gamma + beta, mean, var

    def loss(fn):
        return lambda *a: sum(jnp.sum(jnp.sin(o) * c) for o, c in zip(fn(*a), cot))

    for a, b in zip(batch_norm_train(y, gamma, beta), ref(y, gamma, beta)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.grad(loss(batch_norm_train), (0, 1, 2))(y, gamma, beta),
                    jax.grad(loss(ref), (0, 1, 2))(y, gamma, beta)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind,stride", [("pw", 1), ("conv", 2), ("conv", 1)])
def test_pixel_matmul_and_its_written_out_gradient_match_autodiff_of_the_einsum(kind, stride):
    """Pointwise and im2col convs have a custom VJP on [B*H*W, K] rows (`_pixel_matmul`): the layer's values and
    both gradients equal those of the 4-D einsum it replaces, differentiated by JAX, in the same compiled program
    shape (the step before the change, bench/profile_event0.py ``previous``)."""
    cin, cout, size = (6, 5, 7) if kind == "pw" else (3, 8, 9)
    out = -(-size // stride)
    k = 1 if kind == "pw" else 3
    spec = LayerSpec(0, kind, kind, k, stride, (size, size, cin), (out, out, cout), True, "relu")
    x = jax.random.normal(jax.random.PRNGKey(1), (3, size, size, cin))
    w = jax.random.normal(jax.random.PRNGKey(2), spec.weight_shape)
    cot = jax.random.normal(jax.random.PRNGKey(3), (3, out, out, cout))

    def ref(x, w):
        cols = x if kind == "pw" else im2col(x, k, stride)
        return jnp.einsum("bhwk,kd->bhwd", cols, w.reshape(cols.shape[-1], cout))

    def clq(x, w):
        return linear_op(spec, w, x)

    np.testing.assert_array_equal(np.asarray(jax.jit(clq)(x, w)), np.asarray(jax.jit(ref)(x, w)))
    grads = [jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.tanh(f(x, w)) * cot), (0, 1)))(x, w) for f in (clq, ref)]
    for a, b in zip(*grads):
        assert a.shape == b.shape
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_small_depthwise_grids_pixel_by_pixel_keep_the_learning_step_and_evaluation_bit_for_bit(monkeypatch):
    """The learning step and the evaluation compute the default experiment's 2x2 depthwise layers pixel by pixel
    (`per_pixel`, `clq.model.forward._depthwise_per_pixel`): the parameters after a learning event and the
    evaluation's hit counts equal those of the padded slices exactly (the default experiment's numbers depend on
    it: docs/performance.md). `PER_PIXEL_MAX_OUTPUTS = 0` turns the pixel-by-pixel form off."""
    import importlib

    from clq.model import fold_batch_norm, split_specs
    from clq.quant import make_latent_codec
    from clq.replay import make_replay_buffer
    from clq.train import make_learning_event, make_optimizer, minibatch_composition
    from clq.train.evaluate import jit_count_hits, make_hits, pad_eval_latents

    fw = importlib.import_module("clq.model.forward")  # the module: clq.model re-exports a function `forward`
    specs = mobilenet_v1_specs(0.5, 32, 10)  # the default experiment's model and latent layer
    _, adaptive = split_specs(specs, 19)
    shape = adaptive[0].in_shape
    assert [s.in_shape[:2] for s in adaptive if s.kind == "dw"][:2] == [(2, 2), (2, 2)]
    params, stats = init_params(specs, jax.random.PRNGKey(0))
    folded = fold_batch_norm(specs, params, stats)[20:]
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(0, 6, (400, *shape)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 10, 400).astype(np.int32))
    codes = rng.integers(0, 256, (2000, *shape), dtype=np.uint8)
    test = jax.device_put(pad_eval_latents(codes, rng.integers(0, 10, 2000).astype(np.int32), None, 1000))

    def run(max_outputs):
        monkeypatch.setattr(fw, "PER_PIXEL_MAX_OUTPUTS", max_outputs)
        opt = make_optimizer(1e-2, 0.9, 5e-4)
        buf = make_replay_buffer(300, shape, make_latent_codec(8, 6.0), "ar1", 10)
        state = jax.jit(buf.add)(buf.init(), x[100:], y[100:], jnp.ones(300, bool), jax.random.PRNGKey(0))
        event = make_learning_event(adaptive, opt, buf, minibatch_composition(100, 300, 128), epochs=1)
        p = jax.tree.map(jnp.array, folded)
        p, _, m, _ = event(p, opt.init(p), x[:100], y[:100], jnp.int32(100), state, jax.random.PRNGKey(1))
        hits = jit_count_hits(make_hits(adaptive, 10, 1), 1000)(p, jnp.float32(0.03), test)
        return jax.tree.leaves((p, m.loss, hits))

    on = fw.PER_PIXEL_MAX_OUTPUTS
    for a, b in zip(run(0), run(on)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
