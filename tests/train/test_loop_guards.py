"""Guards of a whole run: replayed latents keep their labels; a run stuck at chance level says so.

Labels: the stream's images are one fixed picture per class, so every latent of class c is the same vector L_c and the
L_c differ between classes. A latent that reached the buffer (or a learning event) under another image's label
would then sit beside a label whose other latents differ from it. Avalanche 0.6.0's AR1 has exactly such a bug
for multi-class experiences (docs/ar1_parity.md); this test keeps clq from having one.
"""

import jax.numpy as jnp
import numpy as np
import pytest

import clq.train.loop as loop
from clq.data.stream import Stream
from clq.model.specs import mobilenet_v1_specs
from clq.train.loop import ReplayConfig, TrainConfig, run_continual

K, SIZE = 4, 16


def _one_picture_per_class_stream() -> Stream:
    rng = np.random.default_rng(0)
    # event 0: every class, then one class per event; every image of class c is the same picture. (With only some
    # of the K pictures in event 0, batch norm's statistics come from them alone, folding turns channels of almost
    # no variance into gains of ~30 each, and the others' latents overflow or not with float32 rounding.)
    labels = [np.repeat(np.arange(K), 10)] + [np.full(12, c) for c in (2, 3, 0, 1, 2, 3)]
    y = np.concatenate(labels).astype(np.int32)
    bounds = np.cumsum([0] + [len(l) for l in labels])
    y = y[np.concatenate([a + rng.permutation(b - a) for a, b in zip(bounds[:-1], bounds[1:])])]  # shuffled per event
    pics = rng.integers(0, 256, (K, SIZE, SIZE, 3), dtype=np.uint8)  # one fixed random picture per class
    x = np.ascontiguousarray(pics[y])
    experiences = [np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    yt = np.arange(40, dtype=np.int32) % K
    return Stream(
        train_images=x, train_labels=y, train_sessions=np.zeros(len(y), np.int32), experiences=experiences,
        experience_classes=[np.unique(y[e]) for e in experiences],
        experience_sessions=np.zeros(len(experiences), np.int32),
        test_images=np.ascontiguousarray(pics[yt]), test_labels=yt, test_sessions=np.zeros(40, np.int32),
        num_classes=K, session_names=("clean",))


@pytest.mark.parametrize("policy", ["ar1", "reservoir", "class_balanced"])
def test_replayed_latents_keep_their_labels(monkeypatch, policy):
    seen = []  # per learning event: (latents float [n, D], labels int [n]) of its new data and its replays
    real = loop.make_learner

    def spy(*args, **kwargs):
        learner = real(*args, **kwargs)

        def jit_step(comp):
            fn = learner.jit_step(comp)

            def wrapped(state, event, hyper):  # what the compiled step receives, read before it is donated
                n = int(event.n_new)
                filled = np.flatnonzero(np.asarray(state.buffer.filled))
                xr, yr = learner.buffer.read(state.buffer, jnp.asarray(filled))
                seen.append((np.asarray(event.latents[:n]).reshape(n, -1), np.asarray(event.labels[:n]),
                             np.asarray(xr).reshape(len(filled), -1), np.asarray(yr)))
                return fn(state, event, hyper)

            return wrapped

        return learner._replace(jit_step=jit_step)

    monkeypatch.setattr(loop, "make_learner", spy)
    stream = _one_picture_per_class_stream()
    specs = mobilenet_v1_specs(0.25, SIZE, K, 3, "relu")
    train = TrainConfig(epochs=1, batch_size=16, lr=1e-4, first_epochs=1, first_lr=0.01, first_batch_size=20,
                        eval_batch_size=40)
    # FP32 frozen stage and replays: the pairing does not depend on precision, and FP32 makes the check exact
    # (8-bit codes clip at event 0's range; the codec has its own property tests in tests/quant).
    run_continual(stream, specs, 23, train, ReplayConfig(size=24, bits=None, policy=policy), None, seed=0)

    assert len(seen) == stream.num_events - 1
    # Each class's latent as the learning events receive it with new data (FP32).
    x_new, y_new = np.concatenate([s[0] for s in seen]), np.concatenate([s[1] for s in seen])
    reference = np.stack([x_new[np.flatnonzero(y_new == c)[0]] for c in range(K)])
    for c in range(K):
        np.testing.assert_array_equal(x_new[y_new == c], np.broadcast_to(reference[c], x_new[y_new == c].shape))
    # Replays (FP32 here, so exact) must be their own label's latent.
    for i, (_, _, xr, yr) in enumerate(seen):
        assert len(yr) > 0
        np.testing.assert_array_equal(xr, reference[yr], err_msg=f"replays of learning event {i + 1}")


def test_a_run_stuck_at_chance_says_so(monkeypatch):
    from clq.train.evaluate import Evaluation

    def chance(*args, **kwargs):  # the adaptive stage has collapsed onto one class of K
        return Evaluation(accuracy=1.0 / K, per_class=np.full(K, np.nan), per_session=np.full(1, 1.0 / K))

    monkeypatch.setattr(loop, "evaluate", chance)
    said = []
    train = TrainConfig(epochs=1, batch_size=16, lr=0.01, first_epochs=1, first_lr=0.01, first_batch_size=20,
                        eval_batch_size=40)
    res = run_continual(_one_picture_per_class_stream(), mobilenet_v1_specs(0.25, SIZE, K, 3, "relu"), 23, train,
                        ReplayConfig(size=24, bits=None), None, seed=0, log=said.append)
    assert len(res["warnings"]) == 1 and "since event 1" in res["warnings"][0] and "train.lr=0.01" in res["warnings"][0]
    warned = [m for m in said if m.startswith("warning: accuracy has stayed at chance")]
    assert warned == ["warning: " + res["warnings"][0]]


def test_a_resumed_run_warns_at_chance_exactly_as_an_uninterrupted_one():
    """The chance-level warning is computed from the rows: rows restored from a checkpoint raise it as they did."""
    from types import SimpleNamespace

    from clq.train.record import History

    n = 12
    stream = SimpleNamespace(num_classes=K, session_names=["s"], experience_classes=[np.arange(1)] * n,
                             experience_sessions=np.zeros(n, int))
    accuracy = [0.5, 0.6] + [1.0 / K] * (n - 2)  # collapses after event 1
    ev = [{"accuracy": a, "per_class": np.full(K, a), "per_session": np.full(1, a)} for a in accuracy]
    whole = History(stream)
    for i in range(n):
        whole.add(i, ev[i])
    assert len(whole.warnings) == 1 and "since event 2" in whole.warnings[0]
    for cut in range(1, n):  # a checkpoint after event cut - 1, then the rest run again
        said = []
        resumed = History(stream, log=said.append)
        for entry in whole.rows[:cut]:
            resumed.restore(entry)
        for i in range(cut, n):
            resumed.add(i, ev[i])
        assert resumed.warnings == whole.warnings, cut
        assert said == ["warning: " + whole.warnings[0]]


def test_a_non_finite_event_blames_the_quantization_only_when_its_check_failed():
    """The message of a diverged learning event names the learning rate. Event 0 at chance level on the test set is
    not taken as a sign of broken quantization: the quantization check measures that directly (next test)."""
    from types import SimpleNamespace

    from clq.train.record import History

    stream = SimpleNamespace(num_classes=K, session_names=["s"], experience_classes=[np.arange(1)] * 3,
                             experience_sessions=np.zeros(3, int))
    for acc0 in (1.3 / K, 2.0 / K):  # at chance, and above
        hist = History(stream)
        hist.quantized(None)  # the check held up
        hist.add(0, {"accuracy": acc0, "per_class": np.full(K, acc0), "per_session": np.full(1, acc0)})
        assert hist.non_finite(1, 0.01, (5, 60)) == ("non-finite loss or parameters in learning event 1, step 5 of 60; "
                                                     "lower train.lr (0.01)")
    assert History(stream).non_finite(2, 0.5) == "non-finite loss or parameters in learning event 2; lower train.lr (0.5)"


def test_a_failed_quantization_check_is_recorded_once_and_quoted_when_an_event_diverges():
    """The frozen stage's quantization check (`check_quantization`) measured the cause directly: a diverged learning
    event quotes it, whatever event 0's test accuracy; a group member records it without telling the log again."""
    from types import SimpleNamespace

    from clq.train.record import History

    stream = SimpleNamespace(num_classes=K, session_names=["s"], experience_classes=[np.arange(1)] * 3,
                             experience_sessions=np.zeros(3, int))
    warning = "the 8-bit frozen stage scores 20.0 % on the first experience's images against 95.0 % in FP32"
    for announce in (True, False):
        said = []
        hist = History(stream, log=said.append)
        hist.quantized(warning, announce=announce)
        hist.add(0, {"accuracy": 0.5, "per_class": np.full(K, 0.5), "per_session": np.full(1, 0.5)})
        assert hist.warnings == [warning] and said == (["warning: " + warning] if announce else [])
        assert hist.non_finite(1, 0.01) == ("non-finite loss or parameters in learning event 1; lower train.lr (0.01). "
                                            "Before it, " + warning)
    hist = History(stream)
    hist.quantized(None)
    assert hist.warnings == [] and hist.quantization_warning is None
