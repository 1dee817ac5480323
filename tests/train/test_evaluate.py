"""The evaluator: one compiled program over the padded test latents gives the counts of a plain numpy argmax."""

import jax
import numpy as np
import pytest

from clq.model import fold_batch_norm, forward, init_params, mobilenet_v1_specs
from clq.train import evaluate, jit_count_hits, make_hits, pad_eval_latents

K, S, LAYER = 4, 3, 25


def test_padded_chunks_count_every_test_latent_once_and_no_padding():
    specs = mobilenet_v1_specs(0.25, 16, K, 3, "relu")
    adaptive = specs[LAYER + 1 :]
    params = fold_batch_norm(specs, *init_params(specs, jax.random.PRNGKey(0)))[LAYER + 1 :]
    rng = np.random.default_rng(0)
    n, scale = 11, np.float32(0.05)  # 11 latents in chunks of 4: the last chunk holds 3 and one padding row
    codes = rng.integers(0, 256, (n, *specs[LAYER].out_shape)).astype(np.uint8)
    labels, sessions = rng.integers(0, K, n).astype(np.int32), rng.integers(0, S, n).astype(np.int32)
    test = pad_eval_latents(codes, labels, sessions, 4)
    assert test.codes.shape[0] == 12 and list(test.labels[n:]) == [-1]
    ev = evaluate(jit_count_hits(make_hits(adaptive, K, S), 4), params, scale, jax.device_put(test), labels, sessions)

    pred = np.argmax(np.asarray(forward(adaptive, params, codes.astype(np.float32) * scale)).reshape(n, -1), -1)
    ok = pred == labels
    assert ev["accuracy"] == pytest.approx(ok.mean())
    for key, groups, count in (("per_class", labels, K), ("per_session", sessions, S)):
        want = [ok[groups == g].mean() if (groups == g).any() else np.nan for g in range(count)]
        np.testing.assert_array_equal(ev[key], want)
    with pytest.raises(ValueError, match="evaluation chunk must be >= 1"):
        pad_eval_latents(codes, labels, sessions, 0)
