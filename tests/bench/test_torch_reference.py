"""The PyTorch reference of bench/bench_torch_reference.py computes clq's network.

The end-to-end speed-up that bench reports is only meaningful if the reference runs the same experiment, so
these check the port against clq itself: the same folded weights give the same logits, and batch norm folds to
the same parameters. (The reference splits learning events with clq's own `minibatch_composition`.)
"""

import os
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")  # in the dev extra (pyproject.toml); the CPU build from the local wheel

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from bench.torch_ref.model import AdaptiveStage, FrozenStage, MobileNetBN, fold_batch_norm, params_from_clq  # noqa: E402

from clq.model import fold_batch_norm as clq_fold  # noqa: E402
from clq.model import forward, init_params, mobilenet_v1_specs, split_specs  # noqa: E402


@pytest.mark.parametrize("width,size,layer", [(0.25, 32, 19), (0.25, 17, 7), (0.5, 32, 23)])
def test_reference_network_computes_clq_forward(width, size, layer):
    """Frozen stage then adaptive stage in PyTorch == clq's forward, for odd and even inputs (SAME padding)."""
    specs = mobilenet_v1_specs(width, size, 10)
    params, stats = init_params(specs, jax.random.PRNGKey(3))
    rng = np.random.default_rng(0)
    # Non-trivial batch-norm statistics, so that folding matters.
    stats = tuple({"mean": rng.normal(0, 0.1, s["mean"].shape).astype(np.float32),
                   "var": rng.uniform(0.5, 2, s["var"].shape).astype(np.float32)} if s else s for s in stats)
    folded = clq_fold(specs, params, stats)
    x = rng.uniform(0, 1, (4, size, size, 3)).astype(np.float32)
    ref = np.asarray(forward(specs, folded, x))

    frozen_specs, adaptive_specs = split_specs(specs, layer)
    tparams = params_from_clq(specs, folded)
    frozen = FrozenStage(frozen_specs, tparams[: layer + 1])
    adaptive = AdaptiveStage(adaptive_specs, tparams[layer + 1 :])
    with torch.no_grad():
        z = frozen(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
        latent = np.asarray(forward(frozen_specs, folded[: layer + 1], x))
        np.testing.assert_allclose(z.numpy().transpose(0, 2, 3, 1), latent, rtol=1e-4, atol=1e-4)
        out = adaptive(z).numpy()
    assert out.shape == ref.shape == (4, 10)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_reference_batch_norm_folding_matches_clq():
    specs = mobilenet_v1_specs(0.25, 16, 10)
    net = MobileNetBN(specs)
    rng = np.random.default_rng(1)
    with torch.no_grad():
        for layer in net.layers:
            layer.bn.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, layer.bn.weight.shape).astype(np.float32)))
            layer.bn.bias.copy_(torch.from_numpy(rng.normal(0, 0.1, layer.bn.bias.shape).astype(np.float32)))
    tstats = [(torch.from_numpy(rng.normal(0, 0.1, l.bn.weight.shape).astype(np.float32)),
               torch.from_numpy(rng.uniform(0.5, 2, l.bn.weight.shape).astype(np.float32))) for l in net.layers]
    ours = fold_batch_norm(net, tstats)

    # The same network in clq's layout, folded by clq.
    params, stats, it = [], [], iter(zip(net.layers, tstats))
    for spec in specs:
        if spec.kind == "pool":
            params.append({}), stats.append({})
        elif spec.kind == "linear":
            params.append({"w": net.fc.weight.detach().numpy().T, "b": net.fc.bias.detach().numpy()})
            stats.append({})
        else:
            layer, (mean, var) = next(it)
            w = layer.conv.weight.detach().numpy()
            w = w[:, :, 0, 0].T if spec.kind == "pw" else w.transpose(2, 3, 1, 0)
            params.append({"w": w, "gamma": layer.bn.weight.detach().numpy(), "beta": layer.bn.bias.detach().numpy()})
            stats.append({"mean": mean.numpy(), "var": var.numpy()})
    theirs = clq_fold(specs, tuple(params), tuple(stats))
    for spec, a, t in zip(specs, ours, params_from_clq(specs, theirs)):
        if spec.kind == "pool":
            continue
        np.testing.assert_allclose(a["w"].numpy(), t["w"].numpy(), rtol=1e-5, atol=1e-6, err_msg=spec.name)
        np.testing.assert_allclose(a["b"].numpy(), t["b"].numpy(), rtol=1e-5, atol=1e-6, err_msg=spec.name)
