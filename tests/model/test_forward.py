"""clq.model.forward: the sweep benchmark's optimizations (docs/performance.md) must not change any number."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clq.model import LayerSpec, init_params, linear_op, mobilenet_v1_specs
from clq.model.forward import same_padding


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
