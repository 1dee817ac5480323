"""Programs kept on disk traced (`clq.programs`): a later process loads them without tracing, with the same
numbers; a damaged entry costs a trace, never a result; transforms and donation behave as under `jax.jit`."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny import TINY, lowered_while, needs_fmnist, run_module

from clq.programs import persistent, programs_dir

# One process: event 0's batch statistics of a tiny network (a `persistent_jit` program), with the compilation
# cache in argv[1] ('' for none). Prints the statistics' digest and the functions it traced.
_SCRIPT = textwrap.dedent("""
    import hashlib, json, sys
    import jax, jax.numpy as jnp, numpy as np
    if sys.argv[1]:
        from clq.run import enable_compile_cache
        enable_compile_cache(sys.argv[1])
    from jax import monitoring
    traced = []
    monitoring.register_event_duration_secs_listener(
        lambda event, d, **kw: traced.append(kw.get("fun_name")) if event.endswith("jaxpr_trace_duration") else None)
    from clq.model.forward import init_params
    from clq.model.specs import mobilenet_v1_specs
    from clq.train.first_event import _batch_stats
    specs = tuple(mobilenet_v1_specs(0.25, 16, 5))
    params, stats = init_params(specs, jax.random.PRNGKey(0))
    pixels = jnp.asarray(np.random.RandomState(0).randint(0, 256, (8, 16, 16, 3)).astype(np.uint8))
    out = jax.device_get(_batch_stats(specs, params, stats, pixels))
    digest = hashlib.sha256(b"".join(np.asarray(x).tobytes() for x in jax.tree.leaves(out))).hexdigest()
    print(json.dumps({"digest": digest, "traced": sorted(set(map(str, traced)))}))
""")


@pytest.fixture(autouse=True)
def programs_on(monkeypatch):
    """The suite keeps programs off (tests/conftest.py); these tests turn them on, here and in their processes."""
    monkeypatch.setenv("CLQ_PROGRAMS", "1")


def _process(cache_dir: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _SCRIPT, cache_dir], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_later_process_loads_the_program_traced_with_the_same_numbers(tmp_path):
    cache = str(tmp_path / "xla")
    first = _process(cache)
    assert "flat" in first["traced"]  # the program of flat arrays that `clq.programs` exports
    kept = os.listdir(os.path.join(cache, "clq-programs"))
    assert len(kept) == 1 and kept[0].endswith(".bin")

    later = _process(cache)
    assert "flat" not in later["traced"]  # loaded: nothing of the network was traced
    assert later["digest"] == first["digest"]
    assert _process("")["digest"] == first["digest"]  # without any cache: the jitted function itself

    # A damaged entry is traced again, with the same numbers, and written anew.
    entry = os.path.join(cache, "clq-programs", kept[0])
    with open(entry, "wb") as f:
        f.write(b"not a program")
    damaged = _process(cache)
    assert "flat" in damaged["traced"] and damaged["digest"] == first["digest"]
    assert os.path.getsize(entry) > 1000
    assert "flat" not in _process(cache)["traced"]


def test_the_key_holds_the_settings_and_the_arguments(tmp_path):
    jitted = jax.jit(lambda x: x * 2)
    a, b = persistent(jitted, f"test.key.{tmp_path}", 1), persistent(jitted, f"test.key.{tmp_path}", 2)
    tree = jax.tree.structure((jnp.zeros(3),))
    small, large = (((3,), "float32", False),), (((4,), "float32", False),)
    assert a._key(tree, small) != b._key(tree, small)  # other settings
    assert a._key(tree, small) != a._key(tree, large)  # other shapes
    assert a._key(tree, small) == persistent(jitted, f"test.key.{tmp_path}", 1)._key(tree, small)


def test_under_a_transform_the_program_runs_as_jitted(tmp_path):
    """Inside `jax.vmap` (a compiled sweep) the arguments are tracers: nothing is exported or written."""
    assert programs_dir() is not None  # the tests' compilation cache is on (tests/conftest.py)
    name = f"test.transform.{tmp_path}"
    program = persistent(jax.jit(lambda x: jnp.sin(x) + 1), name, ())
    before = set(os.listdir(programs_dir())) if os.path.isdir(programs_dir()) else set()
    out = jax.vmap(program)(jnp.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(out, jnp.sin(jnp.arange(6.0).reshape(2, 3)) + 1)
    after = set(os.listdir(programs_dir())) if os.path.isdir(programs_dir()) else set()
    assert after == before


def test_arguments_made_outside_and_inside_programs_share_one_compiled_program(tmp_path):
    """A first call with fresh arrays (uncommitted to a device) and the next with a program's outputs (committed)
    run one compiled program: event 0's epoch was once lowered and compiled twice."""
    program = persistent(jax.jit(lambda x: x * 2 + 1), f"test.placement.{tmp_path}", ())
    fresh = jnp.asarray(np.arange(3.0, dtype=np.float32))  # uncommitted

    def calls():
        program(program(fresh))  # then committed: a program's outputs
        return program(np.arange(3.0, dtype=np.float32))

    out, lowered = lowered_while(calls)
    np.testing.assert_array_equal(out, np.arange(3.0) * 2 + 1)
    assert lowered.count("jit(call)") == 1, lowered  # the exported program, lowered (and compiled) once


@pytest.mark.parametrize("load", [False, True])
def test_donated_arguments_are_donated_and_results_equal(tmp_path, load):
    """The learner's step donates its state: the exported program does too, loaded or just exported."""
    name = f"test.donation.{tmp_path}"
    jitted = jax.jit(lambda state, x: (state["w"] * x + 1, state["w"].sum()), donate_argnums=0)
    if load:  # a first instance exports and writes it; a second (another process's view) loads it
        persistent(jitted, name, (), donate_argnums=(0,))({"w": jnp.ones(4)}, jnp.float32(2))
    program = persistent(jitted, name, (), donate_argnums=(0,))
    state = {"w": jnp.arange(4.0)}
    out = program(state, jnp.float32(3))
    assert state["w"].is_deleted()
    expected = jax.jit(lambda state, x: (state["w"] * x + 1, state["w"].sum()))({"w": jnp.arange(4.0)}, jnp.float32(3))
    for got, want in zip(jax.tree.leaves(out), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(got, want)


@needs_fmnist
def test_later_runs_compile_nothing_and_give_the_same_numbers_with_programs_exported_loaded_or_off(tmp_path):
    """Four tiny `clq-run`s sharing one compilation cache:

    1. programs on, seed 0: exports the programs and fills the persistent compilation cache with every program
       of the run, however quickly it compiled;
    2. the same again: loads the programs (nothing exported again) and compiles nothing (no new cache entry);
    3. programs off (CLQ_PROGRAMS=0, the jitted functions themselves), seed 0;
    4. programs on, seed 1: compiles nothing either (event 0, S_LR and the quantized frozen stage are arguments of
       the programs, not constants) and gives other numbers.

    Runs 1-3 give the same results, event by event.
    """
    cache = tmp_path / "xla"

    def entries():
        return {p.name for p in cache.iterdir() if p.name.endswith("-cache")}

    def programs():
        return sorted(os.listdir(cache / "clq-programs"))

    results = []
    for i, (env, seed) in enumerate((("1", 0), ("1", 0), ("0", 0), ("1", 1))):
        os.environ["CLQ_PROGRAMS"] = env
        run_dir = tmp_path / f"run{i}"
        p = run_module("clq", [*TINY, "checkpoint_every=0", "tracking=none", f"seed={seed}",
                               f"compile_cache_dir={cache}", f"hydra.run.dir={run_dir}"], tmp_path)
        assert p.returncode == 0, p.stderr[-3000:]
        results.append(json.loads((run_dir / "results.json").read_text()))
        if i == 0:
            kept, compiled = programs(), entries()
            assert len(kept) >= 5  # event 0's epoch and statistics, the frozen stage, the learner's programs
            assert len(compiled) > 10
        else:
            assert programs() == kept  # loaded (or off), not exported again
        if i == 1:
            assert entries() == compiled, sorted(entries() - compiled)
        if i == 2:
            compiled = entries()  # the jitted functions may lower to programs of their own
        if i == 3:
            assert entries() == compiled, sorted(entries() - compiled)
    for key in ("accuracy_per_event", "accuracy_matrix", "events", "first_event_history", "buffer", "latent"):
        assert results[1][key] == results[0][key] == results[2][key], key
    assert results[3]["accuracy_per_event"] != results[0]["accuracy_per_event"]
