"""clq's native CPU kernel (XLA FFI): the depthwise convolution's weight gradient in one pass.

XLA's CPU backend computes the weight gradient of a KxK depthwise conv (`clq.model.forward._depthwise`) as K*K
elementwise products, each written to memory by a loop fusion and summed by a separate reduction. That is the
largest single cost of event 0's whole-network step (docs/performance.md, "Event 0's step, profiled"). The C++
kernel in ``csrc/depthwise.cc`` reads the input and the output gradient once and keeps the K*K*C sums in cache.

How it gets here: on first use the source is compiled with the system's C++ compiler (``g++``, installed by
``scripts/setup.sh``) against the XLA FFI headers that jaxlib ships, into ``$CLQ_NATIVE_DIR`` (default
``~/.cache/clq/native``) under a key of everything the binary depends on (source, flags, compiler, jaxlib,
this CPU's instruction set); `scripts/setup.sh` builds it ahead of the first run (`build`). Where it cannot be
had (no compiler, a failed build, ``CLQ_NATIVE=0``) clq warns once and computes the gradient with XLA as before;
on other platforms (a GPU) XLA's form is used. `clq.model.forward.depthwise_weight_grad` makes that choice
(`jax.lax.platform_dependent`). The two forms give the same values up to float32 summation order; the kernel's
own order is fixed (`PARTS`), so a run's numbers do not depend on the thread count.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["depthwise_weight_grad_native", "CUSTOM_CALL_TARGET", "native_available", "native_fingerprint",
           "use_native", "build", "cpu_signature", "PARTS"]

#: The batch of one weight gradient is summed in this many fixed parts (run on the XLA CPU thread pool), then the
#: parts are added in order: the numbers do not depend on how many threads there are.
PARTS = 8

_SOURCE = os.path.join(os.path.dirname(__file__), "csrc", "depthwise.cc")
#: The kernel's name in XLA's FFI registry (`clq.programs` exports the programs that call it with it allowed).
CUSTOM_CALL_TARGET = "clq_depthwise_weight_grad"
_SYMBOL = "ClqDepthwiseWeightGrad"
_FLAGS = ("-O3", "-march=native", "-ffp-contract=fast", "-std=c++17", "-shared", "-fPIC", "-w")
_lock = threading.Lock()
_state: dict = {}
_enabled = [True]


def cpu_signature() -> str:
    """This CPU's model and instruction-set flags (the binary is built with ``-march=native``)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))][:2]
        return "".join(lines)
    except OSError:
        return platform.processor() + platform.machine()


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def _build_key(cxx: str) -> str:
    import jaxlib

    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    with open(_SOURCE, "rb") as f:
        source = f.read()
    h = hashlib.sha256(source)
    for part in (*_FLAGS, version, jaxlib.__version__, cpu_signature(), sys.platform):
        h.update(b"\0" + part.encode())
    return h.hexdigest()[:24]


def build() -> str:
    """Compile the kernel (if this machine's binary is not there yet) and return the shared library's path.

    Raises:
      RuntimeError saying why (no compiler, a compile error) when it cannot be built.
    """
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler (g++) found; scripts/setup.sh installs one")
    folder = os.path.expanduser(os.environ.get("CLQ_NATIVE_DIR", "~/.cache/clq/native"))
    path = os.path.join(folder, f"clq_depthwise-{_build_key(cxx)}.so")
    if os.path.exists(path):
        return path
    os.makedirs(folder, exist_ok=True)
    # Built under a temporary name and renamed: concurrent processes (sweep members, test workers) never load a
    # half-written library.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
    os.close(fd)
    cmd = [cxx, *_FLAGS, f"-I{jax.ffi.include_dir()}", _SOURCE, "-o", tmp]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as e:
        os.unlink(tmp)
        raise RuntimeError(f"{cxx} failed to run: {e}") from None
    if done.returncode != 0:
        os.unlink(tmp)
        raise RuntimeError(f"{cxx} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    os.replace(tmp, path)
    return path


def _load() -> bool:
    """Build (once per machine), load and register the kernel (once per process); False, with one warning,
    when it cannot be had."""
    with _lock:
        if "ok" in _state:
            return _state["ok"]
        if os.environ.get("CLQ_NATIVE", "1") == "0":
            _state["ok"], _state["why"] = False, "CLQ_NATIVE=0"
            return False
        try:
            path = build()
            lib = ctypes.cdll.LoadLibrary(path)
            jax.ffi.register_ffi_target(CUSTOM_CALL_TARGET, jax.ffi.pycapsule(getattr(lib, _SYMBOL)), platform="cpu")
            _state["ok"], _state["binary"] = True, os.path.basename(path)
        except (RuntimeError, OSError, AttributeError) as e:
            _state["ok"], _state["why"] = False, str(e)
            warnings.warn(f"clq: the native depthwise kernel is unavailable ({e}); the depthwise weight gradient "
                          "is computed with XLA instead (slower, same values up to float32 rounding)",
                          RuntimeWarning, stacklevel=3)
        return _state["ok"]


def native_available() -> bool:
    """Whether programs traced now use the native kernel on the CPU (`use_native` and the build decide)."""
    return _enabled[0] and _load()


def native_fingerprint() -> str:
    """What the depthwise weight gradient is computed with, for cache keys: the kernel's binary (its name is the
    key of source, flags, compiler, jaxlib and CPU: another CPU's build may round otherwise), or 'xla'."""
    return f"native-{PARTS}-{_state['binary']}" if native_available() else "xla"


@contextlib.contextmanager
def use_native(enabled: bool):
    """Within the block, programs traced use the native kernel (True, where available) or XLA's form (False):
    the benches compare the two in one process."""
    before = _enabled[0]
    _enabled[0] = enabled
    try:
        yield
    finally:
        _enabled[0] = before


def depthwise_weight_grad_native(x: jax.Array, g: jax.Array, k: int, stride: int, pad_top: int,
                                 pad_left: int) -> jax.Array:
    """The native kernel's call (CPU only; `native_available` must be True when it is traced).

    ``dw[kh, kw, 0, c] = sum_{b, i, j} x[b, i*stride + kh - pad_top, j*stride + kw - pad_left, c] * g[b, i, j, c]``,
    taps outside x counting as zeros (TF 'SAME' padding with the given top and left pads).

    Args:
      x: float32 [..., B, H, W, C], the conv's input; g: float32 [..., B, H', W', C], the gradient of its output
        (leading dimensions: independent problems, as `vmap` passes them).
    Returns:
      float32 [..., K, K, 1, C].
    """
    call = jax.ffi.ffi_call(CUSTOM_CALL_TARGET,
                            jax.ShapeDtypeStruct((*x.shape[:-4], k, k, 1, x.shape[-1]), jnp.float32),
                            vmap_method="broadcast_all")
    return call(x, g, stride=np.int64(stride), pad_top=np.int64(pad_top), pad_left=np.int64(pad_left),
                parts=np.int64(PARTS))
