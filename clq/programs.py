"""The largest programs of a run kept on disk traced and lowered, so that a new process skips tracing them.

JAX's persistent compilation cache (`clq.run.enable_compile_cache`) keys a program by its lowered form: a new
process traces and lowers a program before it can look it up. For the largest programs of a run that is most of
what they cost once compiled: event 0's epoch (~0.45 s tracing, ~0.25 s lowering, then ~0.3 s loading on the
2-core machine) and the learning event (~0.35 and ~0.2 s, then ~0.13 s). `persistent` keeps such a program's
exported form (`jax.export`: the lowered StableHLO, ~0.1 MB) under a key of what it is, and a later process
loads it from there and hands it to XLA (lowering the exported call takes ~0.05 s, then the compilation cache
serves it as any program): event 0's epoch program is ready ~0.8 s sooner.

The program run is the exported form whenever the compilation cache is on, from disk or just exported, so
one machine gives the same numbers whichever way it was had; it computes what the jitted function computes
(bit for bit on the default experiment, `tests/test_programs.py`). The key holds:

* the program's name and the settings its closure binds (the caller passes them; every value a closure reads
  that is not an argument must be among them);
* the arguments' tree structure, shapes, dtypes and weak types;
* the SHA-256 of every ``.py`` file of the installed clq package: any change to clq's code is another key;
* jax's and jaxlib's versions and those of the libraries whose code is traced into the programs (optax, flax,
  chex, numpy, ml_dtypes), ``XLA_FLAGS``, the jax settings that change a traced program, the backend's
  platform and version, the devices, this CPU's model and instruction-set flags, and what the depthwise weight
  gradient is computed with (`clq.model.native.native_fingerprint`).

(Why not the compiled executable itself, which would spare the load too: an executable that XLA's cache
loaded serializes without all its functions on the CPU, and fails when loaded again; caching only freshly
compiled ones would compile every program again after each change to clq.)

The programs live in ``<compile cache dir>/clq-programs`` (JAX's own cache ignores sub-folders), only while the
compilation cache is on (``CLQ_PROGRAMS=0`` turns this cache off alone); at most `MAX_BYTES`, the least recently
used removed first. An entry that cannot be read or loaded is removed and the program traced as before: the cache
can cost a run time, never a result.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import platform
import threading
from typing import Any, Callable

import jax

__all__ = ["persistent", "persistent_jit", "PersistentProgram", "programs_dir", "MAX_BYTES"]

#: Bytes of exported programs kept (event 0's epoch program of the default experiment is ~0.12 MB).
MAX_BYTES = 256 << 20
_FOLDER = "clq-programs"
#: jax settings read while tracing or lowering (the others concern caches, logging and debugging).
_TRACE_SETTINGS = ("jax_enable_x64", "jax_default_matmul_precision", "jax_numpy_rank_promotion",
                   "jax_numpy_dtype_promotion", "jax_default_prng_impl", "jax_threefry_partitionable",
                   "jax_enable_custom_prng", "jax_disable_jit", "jax_debug_nans", "jax_debug_infs")
#: Installed packages whose code runs while a program is traced: another version can trace another program.
_TRACED_PACKAGES = ("optax", "flax", "chex", "numpy", "ml_dtypes")


def programs_dir() -> str | None:
    """The folder of kept programs, or None while JAX's persistent compilation cache is off or ``CLQ_PROGRAMS=0``."""
    root = jax.config.jax_compilation_cache_dir
    if not root or os.environ.get("CLQ_PROGRAMS", "1") == "0":
        return None
    return os.path.join(os.path.expanduser(root), _FOLDER)


@functools.lru_cache(maxsize=1)
def _source_digest() -> str:
    """SHA-256 over the path and bytes of every .py file of the clq package."""
    import clq

    root = os.path.dirname(os.path.abspath(clq.__file__))
    h = hashlib.sha256()
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(folder, name)
            h.update(os.path.relpath(path, root).encode() + b"\0")
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def _environment() -> str:
    """Everything besides the program that decides what tracing and compiling it gives, as text."""
    import jaxlib

    from clq.model.native import cpu_signature

    backend = jax.devices()[0].client
    settings = {name: getattr(jax.config, name, None) for name in _TRACE_SETTINGS}
    return "\n".join(map(str, (
        _source_digest(), jax.__version__, jaxlib.__version__, _package_versions(), os.environ.get("XLA_FLAGS", ""),
        sorted(settings.items()),
        backend.platform, backend.platform_version, [d.device_kind for d in jax.devices()], cpu_signature(),
        platform.machine())))


@functools.lru_cache(maxsize=1)
def _package_versions() -> tuple:
    """(name, version or None) of each of `_TRACED_PACKAGES`."""
    from importlib import metadata

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return tuple((name, version(name)) for name in _TRACED_PACKAGES)


def _jit_exported(exported, donated: tuple[int, ...]):
    """The exported program jitted with every argument placed on the default device. Without a placement, jax
    keys a lowering by whether each argument is committed to a device: the first call (arguments made outside any
    program, uncommitted) and the next (a program's outputs, committed) lowered and compiled two programs, event 0's
    epoch ~0.45 s more in a run whose compilation cache is warm and a whole compile more in one whose is not."""
    device = jax.config.jax_default_device
    if not isinstance(device, jax.Device):
        device = jax.devices(device)[0] if isinstance(device, str) else jax.devices()[0]
    return jax.jit(exported.call, donate_argnums=donated, in_shardings=jax.sharding.SingleDeviceSharding(device))


def _avals(leaves: list) -> tuple:
    """(shape, dtype, weak type) of every leaf: what a traced program accepts."""
    return tuple((tuple(a.shape), str(a.dtype), bool(a.weak_type)) for a in map(jax.typeof, leaves))


class PersistentProgram:
    """A jitted function whose exported form (`jax.export`: the traced and lowered program, ~0.1 MB) a process
    loads from disk the first time it calls it with a signature, and writes there when it had to trace it. Calls
    go to the exported form, jitted (held per signature); XLA's persistent cache compiles or loads it as any
    program."""

    def __init__(self, jitted, name: str, settings: Any, donate_argnums: tuple[int, ...] = ()):
        self._jitted, self._name, self._settings = jitted, name, settings
        self._donate = tuple(donate_argnums)
        self._programs: dict = {}
        self._lock = threading.Lock()
        functools.update_wrapper(self, jitted)

    def lower(self, *args, **kwargs):
        return self._jitted.lower(*args, **kwargs)

    def _cache_size(self) -> int:
        """Programs held in this process: the jitted function's and the exported ones."""
        return self._jitted._cache_size() + len(self._programs)

    def __call__(self, *args):
        folder = programs_dir()
        leaves, tree = jax.tree.flatten(args)
        if folder is None or any(isinstance(x, jax.core.Tracer) for x in leaves):  # off, or inside a transform
            return self._jitted(*args)
        signature = (tree, _avals(leaves))
        program = self._programs.get(signature)
        if program is None:
            with self._lock:
                program = self._programs.get(signature) or self._load_or_export(folder, args, leaves, tree)
                self._programs[signature] = program
        if program is _PLAIN:
            return self._jitted(*args)
        call, out_tree = program
        return jax.tree.unflatten(out_tree, call(*leaves))

    def _key(self, tree, avals) -> str:
        from clq.model.native import native_fingerprint

        text = "\n".join(map(repr, (self._name, self._settings, str(tree), avals, native_fingerprint())))
        return hashlib.sha256((_environment() + "\n" + text).encode()).hexdigest()[:40]

    def _load_or_export(self, folder: str, args: tuple, leaves: list, tree):
        """(jitted exported program of flat leaves, output tree), from `folder` or exported now; `_PLAIN` where
        the program cannot be exported (it then runs as `jax.jit` made it)."""
        try:
            from jax import export
        except ImportError:  # jax.export needs the flatbuffers package
            return _PLAIN
        # The arguments' leaves that the jitted function donates are donated to the exported one too.
        counts = [len(jax.tree.leaves(a)) for a in args]
        starts = [sum(counts[:i]) for i in range(len(counts))]
        donated = tuple(j for i in self._donate for j in range(starts[i], starts[i] + counts[i]))
        path = os.path.join(folder, f"{self._key(tree, _avals(leaves))}.bin")
        try:
            with open(path, "rb") as f:
                blob, out_tree = pickle.load(f)
            exported = export.deserialize(bytearray(blob))
            os.utime(path)  # recently used: evicted last
            return _jit_exported(exported, donated), out_tree
        except FileNotFoundError:
            pass
        except Exception:  # noqa: BLE001 - a damaged or foreign entry costs a trace, never the run
            _remove(path)
        box = {}

        def flat(*xs):
            out, box["tree"] = jax.tree.flatten(self._jitted(*jax.tree.unflatten(tree, xs)))
            return out

        try:
            from clq.model.native import CUSTOM_CALL_TARGET

            exported = export.export(jax.jit(flat), disabled_checks=[
                export.DisabledSafetyCheck.custom_call(CUSTOM_CALL_TARGET)])(*leaves)
            blob = pickle.dumps((exported.serialize(), box["tree"]), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # noqa: BLE001 - a program jax.export cannot take runs as before
            return _PLAIN
        try:
            _store(folder, path, blob)
        except OSError:  # a full or read-only disk costs the next process a trace, never this run
            pass
        return _jit_exported(exported, donated), box["tree"]


#: The program runs as `jax.jit` made it (it could not be exported).
_PLAIN = object()


def persistent(jitted: Callable, name: str, settings: Any,
               donate_argnums: tuple[int, ...] = ()) -> PersistentProgram:
    """`jitted` (a `jax.jit` function of arrays only) kept on disk as described in the module docstring.

    Args:
      jitted: the jitted program; its static values must all be in `settings`.
      name: a name unique among clq's persistent programs (e.g. ``"event0.epoch"``).
      settings: hashable, with a deterministic ``repr``: every value the program's closure bound.
      donate_argnums: the arguments `jitted` donates (their buffers are donated to the loaded program too).
    """
    return PersistentProgram(jitted, name, settings, donate_argnums)


def persistent_jit(name: str, static_argnums: int = 0) -> Callable:
    """Decorator: ``jax.jit(fun, static_argnums=range(static_argnums))``, with the program of every value of the
    leading `static_argnums` arguments kept on disk (`persistent`, those values its settings). For clq's
    module-level programs (their code is in the key through clq's source)."""

    def decorate(fun: Callable) -> Callable:
        programs: dict = {}  # static values -> their program

        @functools.wraps(fun)
        def call(*args):
            statics = args[:static_argnums]
            program = programs.get(statics)
            if program is None:
                program = programs.setdefault(statics, persistent(jax.jit(functools.partial(fun, *statics)), name,
                                                                  statics))
            return program(*args[static_argnums:])

        # As `jax.jit`'s: how many programs this process holds (the tests count them).
        call._cache_size = lambda: sum(p._cache_size() for p in list(programs.values()))
        return call

    return decorate


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _store(folder: str, path: str, blob: bytes) -> None:
    """Write `blob` at `path` atomically, then trim the folder to `MAX_BYTES` (least recently used first)."""
    from clq.atomic import atomic_file

    os.makedirs(folder, exist_ok=True)
    with atomic_file(path) as f:
        f.write(blob)
    entries = []
    for name in os.listdir(folder):
        if name.endswith(".bin"):
            try:
                st = os.stat(os.path.join(folder, name))
            except OSError:
                continue
            entries.append((st.st_mtime, st.st_size, name))
    total = sum(size for _, size, _ in entries)
    for _, size, name in sorted(entries):
        if total <= MAX_BYTES:
            break
        _remove(os.path.join(folder, name))
        total -= size
