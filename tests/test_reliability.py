"""Checkpoint/resume (in-process crash and real SIGKILL), determinism, and the numerical guard."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from clq.data import build_nic_stream, load_fashion_mnist
from clq.model import mobilenet_v1_specs
from clq.quant import QuantConfig
from clq.train import ReplayConfig, TrainConfig, run_continual
from clq.train.loop import NonFiniteError

from tiny import TINY as TINY_OVERRIDES
from tiny import lowered_while, needs_fmnist

pytestmark = needs_fmnist

NUMBERS = ("accuracy_per_event", "final_accuracy", "accuracy_matrix", "forgetting", "buffer")


@pytest.fixture(scope="module")
def tiny():
    x, y, xt, yt = load_fashion_mnist()
    stream = build_nic_stream(x, y, xt, yt, 10, sessions=("clean", "dim"), initial_classes=5,
                              initial_images_per_class=20, images_per_event=12, test_size=200, image_size=16, seed=0)
    specs = mobilenet_v1_specs(0.25, 16, 10)
    train = TrainConfig(epochs=2, batch_size=16, lr=0.01, first_epochs=1, first_batch_size=20, eval_batch_size=100)
    return stream, specs, train


@pytest.fixture(scope="module")
def ref(tiny):
    """One uninterrupted plain run, the reference the other tests compare against."""
    return _run(tiny)


def _run(tiny, **kw):
    stream, specs, train = tiny
    return run_continual(stream, specs, 23, kw.pop("train", train), ReplayConfig(40, 8, "ar1"), QuantConfig(), 0, **kw)


def test_same_seed_same_numbers(tiny, ref):
    """Same numbers, and a second run of the same settings in one process lowers no program: event 0's epoch, the
    population statistics, the frozen stage, the learner and the evaluation are all reused as they are."""
    b, lowered = lowered_while(lambda: _run(tiny))
    for k in NUMBERS:
        assert ref[k] == b[k], k
    assert lowered == []


def test_another_seed_in_the_same_process_reuses_the_learning_programs(tiny, ref):
    """A run at another seed (a sweep's next member, run in this process by Hydra's basic launcher) traces event 0's
    epoch and the learner's programs no more: the seed's values, S_LR included, are their arguments."""
    stream, specs, train = tiny
    other, lowered = lowered_while(lambda: run_continual(stream, specs, 23, train, ReplayConfig(40, 8, "ar1"),
                                                    QuantConfig(), 1))
    assert other["accuracy_per_event"] != ref["accuracy_per_event"]
    assert not {"jit(epoch_fn)", "jit(learning_event)", "jit(init)", "jit(init_fn)"} & set(lowered), lowered


def test_crash_and_resume_is_bit_identical(tiny, ref, tmp_path):
    ck = str(tmp_path / "ck")

    class Crash(Exception):
        pass

    def crash_at(k):
        def on_event(i, row):
            if i == k:
                raise Crash()
        return on_event

    with pytest.raises(Crash):
        _run(tiny, checkpoint_dir=ck, on_event=crash_at(6), fingerprint="f")
    # The last complete one only, and the folded network all checkpoints of the run share.
    files = sorted(os.listdir(ck))
    assert files[:2] == ["ckpt-000005.json", "ckpt-000005.npz"] and len(files) == 3
    assert files[2].startswith("ckpt-static-")
    seen = []
    res = _run(tiny, checkpoint_dir=ck, fingerprint="f", on_event=lambda i, r: seen.append(i))
    assert res["resumed_from_event"] == 5 and seen == list(range(len(ref["accuracy_per_event"])))
    for k in NUMBERS:
        assert res[k] == ref[k], k
    with pytest.raises(Exception, match="different configuration"):
        _run(tiny, checkpoint_dir=ck, fingerprint="other")


def test_torn_checkpoint_is_never_read(tiny, tmp_path):
    from clq.train.checkpoint import load_checkpoint, save_checkpoint
    import jax.numpy as jnp
    save_checkpoint(str(tmp_path), 1, {"a": {"w": jnp.ones(3)}}, {"x": 1}, keep=2)
    save_checkpoint(str(tmp_path), 2, {"a": {"w": jnp.full(3, 2.0)}}, {"x": 2}, keep=2)
    npz = tmp_path / "ckpt-000002.npz"
    npz.write_bytes(npz.read_bytes()[:-20])  # torn write of the newest
    ev, trees, meta = load_checkpoint(str(tmp_path), {"a": {"w": jnp.zeros(3)}})
    assert ev == 1 and meta == {"x": 1} and float(trees["a"]["w"][0]) == 1.0


def test_non_finite_loss_stops_naming_event_and_step(tiny):
    stream, specs, train = tiny
    bad = TrainConfig(epochs=2, batch_size=16, lr=1e30, first_epochs=1, first_batch_size=20, eval_batch_size=100)
    with pytest.raises(NonFiniteError, match=r"learning event 1, step \d+") as e:
        _run(tiny, train=bad)
    assert [r["event"] for r in e.value.completed] == [0]


TINY = [*TINY_OVERRIDES, "tracking=none"]


def _clq(run_dir, extra=()):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen([sys.executable, "-m", "clq", *TINY, *extra, f"hydra.run.dir={run_dir}"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _numbers(run_dir):
    r = json.loads((run_dir / "results.json").read_text())
    return {k: r[k] for k in NUMBERS}


def test_sigkill_at_several_points_then_resume(tmp_path):
    ref_dir = tmp_path / "ref"
    p = _clq(ref_dir)
    assert p.wait(timeout=600) == 0, p.stderr.read()[-2000:]
    ref = _numbers(ref_dir)
    run_dir = tmp_path / "killed"
    for kill_after in (3, 9):  # events completed before the SIGKILL lands
        p = _clq(run_dir)
        events = run_dir / "events.jsonl"
        deadline = time.time() + 600
        while time.time() < deadline and p.poll() is None:
            if events.exists() and len(events.read_text().splitlines()) >= kill_after:
                break
            time.sleep(0.05)
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert not (run_dir / "results.json").exists()
    p = _clq(run_dir)  # the same command in the same run dir resumes
    assert p.wait(timeout=600) == 0, p.stderr.read()[-2000:]
    res = json.loads((run_dir / "results.json").read_text())
    # The kill lands once event 8 was logged. Checkpoints are written in the background with at most one in
    # flight (`CheckpointWriter`): when event 8's line is written, checkpoint 7 may still be in flight and only
    # checkpoint 6 is sure to be committed. On a fast machine (warm compilation cache, ~10 ms per tiny event)
    # the kill can land an event or two later. Never does a run resume from before event 6.
    assert 6 <= res["resumed_from_event"] < len(ref["accuracy_per_event"]) - 1
    assert _numbers(run_dir) == ref
    assert len((run_dir / "events.jsonl").read_text().splitlines()) == len(ref["accuracy_per_event"])


#: AR1's other choices: BRN above l (its running statistics are checkpointed state), a bias-free zeroed classifier,
#: a fresh momentum per event, a constant event-0 rate.
AR1_CHOICES = {"adaptive_norm": "brn", "norm_momentum": 0.05, "head_bias": False, "head_init": "zeros",
               "reset_momentum": True, "first_schedule": "constant"}


@pytest.mark.parametrize("extra", [{}, AR1_CHOICES], ids=["cwr", "ar1_choices"])
def test_ar1star_strategy_resumes_bit_identical(tiny, ref, tmp_path, extra):
    stream, specs, train = tiny
    star = TrainConfig(**{**train.__dict__, "strategy": "ar1star", **extra})
    qlr, ref = ref, _run(tiny, train=star)
    if not extra:
        assert ref["final_accuracy"] > 0.12  # CWR* keeps a working classifier (chance is 0.1)
    assert ref["accuracy_per_event"] != qlr["accuracy_per_event"]  # and it is not plain QLR
    ck = str(tmp_path / "ck")

    def crash(i, row):
        if i == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(tiny, train=star, checkpoint_dir=ck, on_event=crash, fingerprint="s")
    res = _run(tiny, train=star, checkpoint_dir=ck, fingerprint="s")
    assert res["resumed_from_event"] == 3
    for k in NUMBERS:
        assert res[k] == ref[k], k


def test_shared_latent_cache_gives_same_numbers_and_hits(tiny, ref, tmp_path):
    first = _run(tiny, latent_cache_dir=str(tmp_path / "lc"))
    second = _run(tiny, latent_cache_dir=str(tmp_path / "lc"))
    for k in NUMBERS:
        assert first[k] == ref[k] == second[k], k
    assert first["latent_cache"]["misses"] > 0 and first["latent_cache"]["hits"] == 0
    assert second["latent_cache"]["misses"] == 0 and second["latent_cache"]["hits"] == first["latent_cache"]["misses"]


def test_event0_cache_gives_same_numbers_and_skips_event_0(tiny, ref, tmp_path):
    """Event 0 from the on-disk cache: the same numbers as training it; another latent layer or replay setting
    shares the entry; a changed event-0 setting or a corrupt entry is trained again, never returned stale."""
    from clq.train.event0 import event0_key, first_event

    stream, specs, train = tiny
    cache = tmp_path / "e0"
    first = _run(tiny, event0_cache_dir=str(cache))
    second = _run(tiny, event0_cache_dir=str(cache))
    for k in NUMBERS:
        assert first[k] == ref[k] == second[k], k
    assert first["first_event_history"] == second["first_event_history"]
    assert len(list(cache.iterdir())) == 1
    assert first["event0_cached"] is False and second["event0_cached"] is True  # trained once, then loaded
    # The key ignores what event 0 does not use (the latent layer with first_event.norm=batch), not what it uses.
    assert event0_key(stream, specs, 19, train, 0) == event0_key(stream, specs, 23, train, 0)
    assert event0_key(stream, specs, 23, train, 1) != event0_key(stream, specs, 23, train, 0)
    other = dataclasses.replace(train, first_lr=train.first_lr / 2)
    assert event0_key(stream, specs, 23, other, 0) != event0_key(stream, specs, 23, train, 0)
    # A corrupt entry is refused by its checksum and trained again (and rewritten), with the same result.
    (entry,) = cache.iterdir()
    for f in entry.glob("*.npz"):
        f.write_bytes(b"torn")
    again = first_event(stream, specs, 23, train, 0, cache_dir=str(cache))
    assert not again.cached
    assert first_event(stream, specs, 23, train, 0, cache_dir=str(cache)).cached


def test_event0_cache_stays_under_its_bound_and_keeps_what_it_uses(tiny, tmp_path, monkeypatch):
    """The event-0 cache is on by default, so it is bounded: using an entry marks it, and the least recently used
    others go once the folder exceeds `EVENT0_CACHE_BYTES`. Its key covers the whole modules that train event 0."""
    import clq.train.event0 as e0
    import clq.train.latent_cache as lc

    stream, specs, train = tiny
    cache = tmp_path / "e0"
    stale = cache / "stale"
    stale.mkdir(parents=True)
    (stale / "blob").write_bytes(b"x" * 4096)
    os.utime(stale, (1, 1))
    names = []
    real = lc.code_version
    monkeypatch.setattr(e0, "code_version", lambda tag, modules: names.extend(modules) or real(tag, modules))
    monkeypatch.setattr(e0, "EVENT0_CACHE_BYTES", 1 << 40)
    first = e0.first_event(stream, specs, 23, train, 0, cache_dir=str(cache))
    assert {"clq.model.forward", "clq.train.first_event", "clq.train.norm"} <= set(names)
    assert sorted(p.name for p in cache.iterdir()) == sorted(["stale", first.key])  # under the bound: kept
    monkeypatch.setattr(e0, "EVENT0_CACHE_BYTES", 4096)
    again = e0.first_event(stream, specs, 23, train, 0, cache_dir=str(cache))
    assert again.cached and [p.name for p in cache.iterdir()] == [first.key]  # the stale entry went, not this one


def test_background_checkpoints_commit_in_order_and_hold_the_saved_values(tmp_path):
    """`CheckpointWriter` copies the arrays when `save` returns (the learning step donates its state), commits
    in order, keeps the newest `keep`, and a failed write raises at the next save."""
    import jax.numpy as jnp
    import numpy as np

    from clq.train.checkpoint import CheckpointWriter, load_checkpoint

    host = np.zeros(4, np.float32)
    rows = []
    with CheckpointWriter() as writer:
        for i in range(5):
            host[:] = i
            rows.append(i)
            writer.save(str(tmp_path), i, {"a": {"w": host, "j": jnp.full(2, float(i))}}, {"rows": rows}, keep=2)
            host[:] = -1  # overwritten right after save, as a donated buffer is
    assert sorted(os.listdir(tmp_path)) == ["ckpt-000003.json", "ckpt-000003.npz", "ckpt-000004.json",
                                            "ckpt-000004.npz"]
    template = {"a": {"w": jnp.zeros(4), "j": jnp.zeros(2)}}
    event, trees, meta = load_checkpoint(str(tmp_path), template)
    assert event == 4 and meta["rows"] == [0, 1, 2, 3, 4]
    assert np.array_equal(np.asarray(trees["a"]["w"]), np.full(4, 4.0)) and float(trees["a"]["j"][0]) == 4.0

    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    writer = CheckpointWriter()
    writer.save(str(blocked), 0, {"a": {"w": host}}, {})
    with pytest.raises(OSError):
        writer.save(str(blocked), 1, {"a": {"w": host}}, {})
    writer.close()


def test_an_error_in_the_run_still_commits_the_last_checkpoint(tmp_path):
    import jax.numpy as jnp

    from clq.train.checkpoint import CheckpointWriter, load_checkpoint

    with pytest.raises(KeyError):
        with CheckpointWriter() as writer:
            writer.save(str(tmp_path), 7, {"a": {"w": jnp.ones(3)}}, {"x": 1})
            raise KeyError("the run's own error")
    assert load_checkpoint(str(tmp_path), {"a": {"w": jnp.zeros(3)}})[0] == 7


def test_starting_over_in_a_folder_with_later_checkpoints_keeps_the_new_ones(tmp_path):
    """resume=false in a reused run dir: the new run's checkpoints replace the stale later ones (pruning by file
    name used to delete the checkpoint just written and keep the stale one)."""
    import jax.numpy as jnp

    from clq.train.checkpoint import CheckpointWriter, load_checkpoint, save_checkpoint

    save_checkpoint(str(tmp_path), 10, {"a": {"w": jnp.full(3, 10.0)}}, {"x": 10})
    save_checkpoint(str(tmp_path), 0, {"a": {"w": jnp.zeros(3)}}, {"x": 0})
    assert load_checkpoint(str(tmp_path), {"a": {"w": jnp.zeros(3)}})[0] == 0
    rows = []
    with CheckpointWriter() as writer:
        for i in (1, 2):
            rows.append({"event": i})
            writer.save(str(tmp_path), i, {"a": {"w": jnp.full(3, float(i))}}, {"rows": rows}, keep=2)
            rows[-1]["event"] = -1  # the caller changes its rows afterwards: the checkpoint keeps them as saved
    assert sorted(os.listdir(tmp_path)) == ["ckpt-000001.json", "ckpt-000001.npz", "ckpt-000002.json",
                                            "ckpt-000002.npz"]
    with open(tmp_path / "ckpt-000001.json") as f:
        assert json.load(f)["meta"]["rows"] == [{"event": 1}]


def test_static_trees_are_written_once_and_restored_with_every_checkpoint(tmp_path):
    """`CheckpointWriter.save(static=...)`: trees that stay the same arrays (a run's folded network) go to one
    content-addressed file that every record names; each checkpoint restores them, a damaged static file makes
    its checkpoints unreadable like a damaged one of their own, and pruning drops static files nobody names."""
    import jax.numpy as jnp
    import numpy as np

    from clq.train.checkpoint import CheckpointWriter, load_checkpoint

    frozen = {"w": jnp.arange(6.0), "b": jnp.ones(2)}
    template = {"frozen": {"w": jnp.zeros(6), "b": jnp.zeros(2)}, "a": {"w": jnp.zeros(3)}}
    with CheckpointWriter() as writer:
        for i in range(3):
            writer.save(str(tmp_path), i, {"a": {"w": jnp.full(3, float(i))}}, {"i": i}, keep=2,
                        static={"frozen": frozen})
            if i == 0:
                writer.wait()
                written = [f for f in os.listdir(tmp_path) if f.startswith("ckpt-static-")]
                assert len(written) == 1
                first = os.stat(tmp_path / written[0]).st_mtime_ns
    static = [f for f in os.listdir(tmp_path) if f.startswith("ckpt-static-")]
    assert static == written and os.stat(tmp_path / static[0]).st_mtime_ns == first  # not rewritten
    assert sorted(f for f in os.listdir(tmp_path) if not f.startswith("ckpt-static-")) == [
        "ckpt-000001.json", "ckpt-000001.npz", "ckpt-000002.json", "ckpt-000002.npz"]
    with np.load(tmp_path / "ckpt-000002.npz") as z:
        assert not any(k.startswith("frozen/") for k in z.files)  # the per-event file holds only the rest
    event, trees, meta = load_checkpoint(str(tmp_path), template)
    assert event == 2 and meta == {"i": 2} and float(trees["a"]["w"][0]) == 2.0
    np.testing.assert_array_equal(trees["frozen"]["w"], np.arange(6.0))

    # New arrays (another network) are written again, and the file no kept record names is pruned.
    with CheckpointWriter() as writer:
        writer.save(str(tmp_path), 3, {"a": {"w": jnp.full(3, 3.0)}}, {"i": 3}, keep=1,
                    static={"frozen": {"w": jnp.full(6, 7.0), "b": jnp.ones(2)}})
    assert len([f for f in os.listdir(tmp_path) if f.startswith("ckpt-static-")]) == 1
    assert float(load_checkpoint(str(tmp_path), template)[1]["frozen"]["w"][0]) == 7.0

    # The static file gone (another writer pruned the folder): the next save writes it again.
    net = {"w": jnp.full(6, 8.0), "b": jnp.ones(2)}
    with CheckpointWriter() as writer:
        writer.save(str(tmp_path), 4, {"a": {"w": jnp.full(3, 4.0)}}, {"i": 4}, static={"frozen": net})
        writer.wait()
        for f in os.listdir(tmp_path):
            if f.startswith("ckpt-static-"):
                os.unlink(tmp_path / f)
        writer.save(str(tmp_path), 5, {"a": {"w": jnp.full(3, 5.0)}}, {"i": 5}, static={"frozen": net})
    event, trees, _ = load_checkpoint(str(tmp_path), template)
    assert event == 5 and float(trees["frozen"]["w"][0]) == 8.0

    # A damaged static file: the checkpoint naming it is not read, and the caller is told why.
    (s,) = [f for f in os.listdir(tmp_path) if f.startswith("ckpt-static-")]
    (tmp_path / s).write_bytes((tmp_path / s).read_bytes()[:-10])
    with pytest.warns(RuntimeWarning, match="no checkpoint verifies"):
        assert load_checkpoint(str(tmp_path), template) is None
