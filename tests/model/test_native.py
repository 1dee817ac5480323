"""clq.model.native: the native depthwise weight gradient equals XLA's form (`clq.model.forward.depthwise_weight_grad`
chooses), and clq falls back to it cleanly."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clq.model import mobilenet_v1_specs
from clq.model import native
from clq.model.forward import depthwise_weight_grad, forward_bn, init_params


def test_the_kernel_is_built_here():
    """scripts/setup.sh installs a compiler and builds the kernel; a silent fallback would hide a broken build."""
    assert native.native_available(), native._state.get("why")
    assert native.native_fingerprint().startswith("native-")


def _both(x, g, k, stride):
    with native.use_native(True):
        a = jax.jit(lambda x, g: depthwise_weight_grad(x, g, k, stride))(x, g)
    with native.use_native(False):
        b = jax.jit(lambda x, g: depthwise_weight_grad(x, g, k, stride))(x, g)
    return np.asarray(a), np.asarray(b)


@pytest.mark.parametrize("shape,k,stride", [((3, 7, 5, 5), 3, 1), ((3, 7, 5, 5), 3, 2), ((2, 8, 8, 16), 3, 2),
                                            ((4, 2, 2, 33), 3, 1), ((4, 1, 1, 8), 3, 1), ((2, 6, 6, 4), 5, 2),
                                            ((9, 4, 4, 3), 3, 1)])
def test_native_weight_gradient_matches_xla(shape, k, stride):
    """Odd sizes (asymmetric 'SAME' padding at stride 2), 1x1 and 2x2 inputs, a 5x5 kernel, a batch that the
    fixed parts do not divide."""
    kx, kg = jax.random.split(jax.random.PRNGKey(sum(shape) + stride))
    x = jax.random.normal(kx, shape)
    out = -(-shape[1] // stride), -(-shape[2] // stride)
    g = jax.random.normal(kg, (shape[0], *out, shape[3]))
    a, b = _both(x, g, k, stride)
    assert a.shape == b.shape == (k, k, 1, shape[3])
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # Every tap matters: a kernel that dropped or shifted one would be off by a whole product.
    assert np.abs(b).min() > 0 or shape[1] == 1


def test_native_weight_gradient_is_deterministic():
    x = jax.random.normal(jax.random.PRNGKey(0), (64, 16, 16, 32))
    g = jax.random.normal(jax.random.PRNGKey(1), (64, 16, 16, 32))
    f = jax.jit(lambda x, g: depthwise_weight_grad(x, g, 3, 1))
    first = np.asarray(f(x, g))
    for _ in range(3):
        np.testing.assert_array_equal(np.asarray(f(x, g)), first)


def test_native_weight_gradient_under_vmap_equals_each_member():
    """A compiled sweep vmaps the learning step over its members; only x may be batched (shared g) or both."""
    x = jax.random.normal(jax.random.PRNGKey(2), (3, 4, 6, 6, 8))
    g = jax.random.normal(jax.random.PRNGKey(3), (3, 4, 3, 3, 8))
    f = jax.jit(jax.vmap(lambda x, g: depthwise_weight_grad(x, g, 3, 2)))
    both = np.asarray(f(x, g))
    shared = np.asarray(jax.jit(jax.vmap(lambda x: depthwise_weight_grad(x, g[0], 3, 2)))(x))
    for m in range(3):
        np.testing.assert_array_equal(both[m], np.asarray(depthwise_weight_grad(x[m], g[m], 3, 2)))
        np.testing.assert_array_equal(shared[m], np.asarray(depthwise_weight_grad(x[m], g[0], 3, 2)))


def test_whole_network_gradient_in_a_scan_matches_xla():
    """Event 0's case: the gradient of the whole network with batch statistics, inside a `lax.scan`."""
    specs = tuple(mobilenet_v1_specs(0.25, 16, 5))
    params, _ = init_params(specs, jax.random.PRNGKey(0))
    xs = jax.random.uniform(jax.random.PRNGKey(1), (2, 8, 16, 16, 3))

    def grads(p):
        def loss(p, x):
            return jnp.sum(forward_bn(specs, p, tuple({} for _ in specs), x, train=True)[0] ** 2)
        return jax.lax.scan(lambda c, x: (c, jax.grad(loss)(p, x)), 0, xs)[1]

    with native.use_native(True):
        a = jax.jit(grads)(params)
    with native.use_native(False):
        b = jax.jit(grads)(params)
    for i, (pa, pb) in enumerate(zip(a, b)):
        for name in pa:
            scale = float(jnp.max(jnp.abs(pb[name]))) or 1.0
            np.testing.assert_allclose(np.asarray(pa[name]), np.asarray(pb[name]), atol=2e-5 * scale, rtol=1e-4,
                                       err_msg=f"layer {i} ({specs[i].kind}) {name}")


def test_without_a_compiler_clq_warns_once_and_uses_xla(tmp_path):
    code = textwrap.dedent("""
        import warnings, jax, numpy as np
        from clq.model import native
        from clq.model.forward import depthwise_weight_grad
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 5, 3))
            a = jax.jit(lambda x: depthwise_weight_grad(x, x, 3, 1))(x)
            b = jax.jit(lambda x: depthwise_weight_grad(x, 2 * x, 3, 1))(x)
        print(native.native_available(), native.native_fingerprint(), len(seen))
        print(seen[0].message)
        np.testing.assert_allclose(np.asarray(b), 2 * np.asarray(a), rtol=1e-6)
    """)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "CXX": str(tmp_path / "no-such-compiler"),
           "CLQ_NATIVE_DIR": str(tmp_path / "native")}
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    first, message = p.stdout.splitlines()[:2]
    assert first == "False xla 1"
    assert "native depthwise kernel is unavailable" in message and "no-such-compiler" in message


def test_a_compile_error_is_reported_not_raised(tmp_path):
    """A broken build (here: a 'compiler' that fails) names the compiler and its error; the run goes on."""
    fake = tmp_path / "cxx"
    fake.write_text("#!/bin/sh\necho 'fake compiler version'\n[ \"$1\" = --version ] && exit 0\n"
                    "echo 'error: something broke' >&2\nexit 1\n")
    fake.chmod(0o755)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "CXX": str(fake), "CLQ_NATIVE_DIR": str(tmp_path / "native")}
    code = "from clq.model import native; print(native.native_available(), native._state['why'])"
    p = subprocess.run([sys.executable, "-W", "ignore", "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("False ") and "something broke" in p.stdout
    assert not any(f.endswith(".so") for f in os.listdir(tmp_path / "native"))  # nothing half-built left
