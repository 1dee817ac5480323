import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clq.model import (
    fold_batch_norm, forward, forward_bn, init_params, mobilenet_v1_specs, num_params, split_specs,
    validate_latent_layer,
)

PAPER_SHAPES = {0: (64, 64, 32), 2: (64, 64, 64), 3: (32, 32, 64), 4: (32, 32, 128), 7: (16, 16, 128),
                8: (16, 16, 256), 11: (8, 8, 256), 12: (8, 8, 512), 19: (8, 8, 512), 22: (8, 8, 512),
                23: (4, 4, 512), 24: (4, 4, 1024), 26: (4, 4, 1024), 27: (1, 1, 1024)}
LR_ELEMENTS = {19: 32768, 20: 32768, 21: 32768, 22: 32768, 23: 8192, 24: 16384, 25: 16384, 26: 16384, 27: 1024}


def test_paper_table():
    specs = mobilenet_v1_specs(1.0, 128, 50)
    assert [s.index for s in specs] == list(range(29))
    for i, shape in PAPER_SHAPES.items():
        assert specs[i].out_shape == shape, i
    for i, n in LR_ELEMENTS.items():
        assert specs[i].out_elements == n
    assert specs[19].name == "conv5_4_dw" and specs[19].kind == "dw"
    assert specs[27].kind == "pool" and specs[28].kind == "linear" and specs[28].out_channels == 50
    assert 3.1e6 < num_params(specs) < 3.3e6  # "~3.2 M parameters"
    assert 180e6 < sum(s.macs for s in specs) < 190e6  # "~185 M forward MAC"


def test_split_and_validation():
    specs = mobilenet_v1_specs(0.25, 32, 10)
    frozen, adaptive = split_specs(specs, 19)
    assert frozen[-1].index == 19 and adaptive[0].index == 20 and len(frozen) + len(adaptive) == 29
    _, adaptive = split_specs(specs, 27)
    assert [s.kind for s in adaptive] == ["linear"]  # l=27: only the classifier trains
    for bad in (-1, 28, 3.0, True):
        with pytest.raises(ValueError, match="latent_layer"):
            validate_latent_layer(specs, bad)
    with pytest.raises(ValueError, match="model.width"):
        mobilenet_v1_specs(0.0)


@pytest.mark.parametrize("width,size", [(0.25, 32), (0.5, 28), (0.25, 64)])
def test_forward_shapes_and_bn_folding(width, size):
    specs = mobilenet_v1_specs(width, size, 7)
    params, stats = init_params(specs, jax.random.PRNGKey(0))
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, size, size, 3))
    # Non-trivial BN statistics so that folding is really exercised.
    stats = tuple({"mean": jnp.full_like(s["mean"], 0.1), "var": jnp.full_like(s["var"], 2.0)} if s else {} for s in stats)
    y_bn, _ = forward_bn(specs, params, stats, x, train=False)
    folded = fold_batch_norm(specs, params, stats)
    y = jax.jit(lambda p, x: forward(specs, p, x))(folded, x)
    assert y.shape == (4, 1, 1, 7) or y.shape == (4, 7)
    np.testing.assert_allclose(np.asarray(y).reshape(4, 7), np.asarray(y_bn).reshape(4, 7), rtol=1e-4, atol=1e-4)
    # The split forward equals the whole forward.
    l = 13
    h = forward(specs[: l + 1], folded[: l + 1], x)
    assert h.shape == (4, *specs[l].out_shape)
    np.testing.assert_allclose(np.asarray(forward(specs[l + 1 :], folded[l + 1 :], h)), np.asarray(y), rtol=1e-5, atol=1e-5)


def test_depthwise_matches_grouped_conv():
    specs = mobilenet_v1_specs(0.25, 17, 5)
    from clq.model.forward import linear_op, same_padding
    for s in (specs[1], specs[3]):  # stride 1 and stride 2
        x = jax.random.normal(jax.random.PRNGKey(2), (2, *s.in_shape))
        w = jax.random.normal(jax.random.PRNGKey(3), s.weight_shape)
        ref = jax.lax.conv_general_dilated(
            x, w, (s.stride, s.stride),
            (same_padding(s.in_shape[0], 3, s.stride), same_padding(s.in_shape[1], 3, s.stride)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=s.in_channels)
        got = linear_op(s, w, x)
        assert got.shape == (2, *s.out_shape)
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-5)
