"""Shared, cached test networks for tests/quant (built once per session: compiling is the slow part)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clq.model import BN_EPS, forward_bn, mobilenet_v1_specs
from clq.quant import INPUT_SCALE, QuantConfig, calibrate_activation_max, quantize_frozen_stage
from clq.quant.report import photo_set

FROZEN = 28  # layers 0..27: every candidate latent_layer


@functools.lru_cache(maxsize=None)
def _network(width, size, act="relu", n=24, seed=0):
    specs = mobilenet_v1_specs(width, size, 10, activation=act)
    rng = np.random.default_rng(seed)
    params, stats = [], []
    for s in specs:
        if not s.has_params:
            params.append({})
            stats.append({})
            continue
        fan_in = np.prod(s.weight_shape[:-1]) if s.kind != "dw" else s.kernel**2
        w = (rng.standard_normal(s.weight_shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        c = s.out_channels
        if s.batch_norm:
            params.append({"w": w, "gamma": rng.uniform(0.5, 1.5, c).astype(np.float32),
                           "beta": rng.normal(0.2, 0.3, c).astype(np.float32)})
            stats.append({"mean": np.zeros(c, np.float32), "var": np.ones(c, np.float32)})
        else:
            params.append({"w": w, "b": rng.normal(0, 0.1, c).astype(np.float32)})
            stats.append({})
    px = photo_set(n, size, seed=seed)
    fbn = jax.jit(lambda p, st, x: forward_bn(specs, p, st, x, True)[1])
    batch = fbn(tuple(params), tuple(stats), jnp.asarray(px.astype(np.float32) * INPUT_SCALE))
    folded = []
    for p, b in zip(params, batch):
        if "gamma" in p:
            g = p["gamma"] / np.sqrt(np.asarray(b["var"]) + BN_EPS)
            folded.append({"w": p["w"] * g, "b": p["beta"] - np.asarray(b["mean"]) * g})
        else:
            folded.append(dict(p))
    return specs, tuple(folded), px


@pytest.fixture(scope="session")
def network():
    """network(width, size, act='relu', n=24, seed=0) -> (specs, folded params, uint8 photos [n,size,size,3]).

    MobileNet-V1 with random weights whose batch norms are set from real photos (scikit-image, augmented) so
    that activations have realistic, data-dependent ranges; folded form (numpy float32 params)."""
    return _network


@functools.lru_cache(maxsize=None)
def _default_stage():
    specs, folded, px = _network(0.25, 32)
    cfg = QuantConfig(equalize=False)  # the paper's pipeline: these tests check its integer arithmetic
    a_max = calibrate_activation_max(specs[:FROZEN], folded[:FROZEN], [px[:16].astype(np.float32) * INPUT_SCALE], cfg)
    return specs, folded, px[16:], a_max, quantize_frozen_stage(specs[:FROZEN], folded[:FROZEN], a_max, cfg)


@pytest.fixture(scope="session")
def default_stage():
    """Width 0.25, 32 px, relu; paper-default quantization of layers 0..27 calibrated on 16 photos.

    Returns (specs, folded, 8 held-out uint8 photos, a_max [28], layers)."""
    return _default_stage()
