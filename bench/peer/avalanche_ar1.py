"""Avalanche 0.6.0's AR1 (latent replay + CWR*) on clq's stream with clq's ImageNet weights: the peer run.

    bench/.venv-avalanche/bin/python bench/peer/avalanche_ar1.py --stream S.npz --weights W.npz --out R.json \
        [--fix-replay-labels]
    bench/.venv-avalanche/bin/python bench/peer/avalanche_ar1.py --weights W.npz --check-only

Runs in the Avalanche environment (bench/peer/setup_avalanche.sh) and reads the two files that
bench/peer/export.py writes from clq's environment; it imports neither clq nor JAX. bench/bench_avalanche.py
runs it beside clq and compares.

**The network.** `avalanche.training.AR1` builds its own model, ``MobilenetV1(pretrained=True,
latent_layer_num=l)`` (pytorchcv's ``mobilenet_w1`` with ImageNet weights from the internet). Here the name
``MobilenetV1`` that ``avalanche.training.supervised.ar1`` looks up is patched, for the constructor call only,
to a builder that makes Avalanche's own ``MobilenetV1(pretrained=False, latent_layer_num=l)`` (same modules,
same names, same ``lat_features`` / ``end_features`` split; no download) and loads the TF-slim ImageNet
MobileNet-V1 1.0 that clq uses. Each change below makes the PyTorch modules compute *that checkpoint's own
function* (TF-slim's MobileNet-V1 graph); none changes what AR1 does with the network:

* weights: conv HWIO -> OIHW, depthwise [K, K, 1, C] -> [C, 1, K, K], pointwise [C_in, C_out] -> [C_out, C_in,
  1, 1]; BatchNorm gamma/beta/moving mean/moving variance into ``weight``/``bias``/``running_mean``/
  ``running_var``.
* BatchNorm eps: TF-slim's is 1e-3 (pytorchcv's 1e-5). AR1's ``replace_bn_with_brn`` turns each BatchNorm2d into
  a ``BatchRenorm2D`` that takes the BN's ``eps`` (used for batch statistics in training mode) and stores
  ``running_avg_std = sqrt(running_var)`` with no eps (used in eval mode). So ``eps = 1e-3`` and
  ``running_var = var + 1e-3``: in eval mode the BRN computes TF's ``(x - mean) / sqrt(var + 1e-3)`` exactly, and
  in training mode it normalises with ``sqrt(batch_var + 1e-3)`` as TF's BN does.
* activation: ReLU6 (TF-slim's MobileNet-V1) instead of pytorchcv's ReLU.
* padding: TF 'SAME' (`SamePadConv2d`). At stride 1 this is PyTorch's symmetric 1 for 3x3 kernels; at stride 2
  on an even input it pads (0, 1), bottom/right, where pytorchcv pads 1 on every side.
* final pool: a global average (``AdaptiveAvgPool2d(1)``, TF-slim's pool of the last map). Avalanche sets
  ``AvgPool2d(4)``, sized for 128 px input (4x4 last map); at 64 px the last map is 2x2.
* classifier: ``Linear(1024, num_classes, bias=False)`` (Avalanche's is 1024 -> 50 for CORe50). CWR* zeroes it
  before the first experience, so its initial values never matter.

`latent_check` runs the converted model (as AR1 holds it, after ``replace_bn_with_brn``, in eval mode) on the
reference images of the weights file and compares its ``lat_features`` output (layer l) and its pooled features
(layer 27) with clq's FP32 ``forward_bn`` outputs stored there; the run stops if the relative error exceeds
``--tolerance``.

**The run.** One Avalanche experience per clq learning event (same images, same order), inputs
``2 * pixel / 255 - 1`` NCHW, targets in ``experience.dataset.targets`` (where AR1 and CWR* read them).
``AR1(...)`` with its defaults except ``latent_layer_num = l``, ``freeze_below_layer = "lat_features.{l}.bn"``,
``rm_sz``, ``train_mb_size=128``, ``train_epochs=4``, ``lr=1e-3``, ``inc_lr=5e-5``, CPU, and an evaluator with
no loggers. After every experience this script evaluates the model on the whole test set itself (eval mode,
batches of 500). ``torch.manual_seed(seed)``; 2 torch threads, or ``--threads auto`` (`choose_threads`): on a
shared 2-core machine two spinning OpenMP threads made later events' small operations ~4x slower than one.

**Replay labels.** AR1 0.6.0 collects the latents of the first epoch in the shuffled order of its data loader
(``cur_acts``) but labels the ones it stores with ``experience.dataset.targets[idx]``, in dataset order: in a
multi-class experience (event 0) most stored replay labels are wrong. `ReplayAudit` (an observer; it changes
nothing) records each first-epoch latent's true label and, by replaying AR1's two ``torch.randperm`` draws from
the same generator state, the true label of every buffer slot: the output holds the fraction of wrong replay
labels after each event. ``--fix-replay-labels`` runs `AR1OwnLabels`, AR1 whose buffer update pairs each latent
with the label that came with it in its mini-batch (otherwise the same update, with the same random draws).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import random
import resource
import time
import warnings
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


# --- the network ------------------------------------------------------------------------------------------

class SamePadConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow's 'SAME' padding: ``ceil(size / stride)`` outputs, the extra pad after.

    Symmetric cases (stride 1, odd sizes, 1x1 kernels) use the convolution's own zero padding, as pytorchcv's
    layers do; only the asymmetric ones (stride 2 on an even size: (0, 1)) pay for an explicit pad.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride):
            total = max((-(-size // s) - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top == bottom and left == right:
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), self.dilation, self.groups)
        return F.conv2d(F.pad(x, (left, right, top, bottom)), self.weight, self.bias, self.stride, 0, self.dilation,
                        self.groups)


def _torch_weight(kind: str, w: np.ndarray) -> torch.Tensor:
    """clq's weight layout -> PyTorch's OIHW."""
    if kind in ("conv", "dw"):  # HWIO [K, K, C_in, C_out] and [K, K, 1, C] both -> [C_out, C_in/groups, K, K]
        w = w.transpose(3, 2, 0, 1)
    elif kind == "pw":  # [C_in, C_out] -> [C_out, C_in, 1, 1]
        w = w.T[:, :, None, None]
    else:
        raise ValueError(f"no conversion for layer kind {kind!r}")
    return torch.from_numpy(np.ascontiguousarray(w, np.float32))


def tf_slim_mobilenet_v1(weights: dict, latent_layer_num: int, num_classes: int) -> nn.Module:
    """Avalanche's ``MobilenetV1(pretrained=False)`` carrying the TF-slim weights and computing their function.

    See the module docstring for each change. Raises ValueError if the model's layers do not line up with the
    exported ones (kind, shape, stride).
    """
    from avalanche.models import MobilenetV1

    model = MobilenetV1(pretrained=False, latent_layer_num=latent_layer_num)
    kinds = [str(k) for k in weights["layer_kinds"]]
    strides = [int(s) for s in weights["layer_strides"]]
    eps = float(weights["bn_eps"])
    seqs = [model.lat_features] * len(model.lat_features) + [model.end_features] * len(model.end_features)
    pos = list(range(len(model.lat_features))) + list(range(len(model.end_features)))
    if len(seqs) != len(kinds):
        raise ValueError(f"Avalanche's MobilenetV1 has {len(seqs)} layers before the classifier, the export {len(kinds)}")
    for i, (seq, j, kind, stride) in enumerate(zip(seqs, pos, kinds, strides)):
        block = seq[j]
        if kind == "pool":
            if not isinstance(block, nn.AvgPool2d):
                raise ValueError(f"layer {i}: expected the final pool, found {type(block).__name__}")
            seq[j] = nn.AdaptiveAvgPool2d(1)
            continue
        conv, bn = block.conv, block.bn
        w = _torch_weight(kind, np.asarray(weights[f"w_{i}"]))
        depthwise = conv.groups == conv.in_channels and conv.groups > 1
        if (kind == "dw") != depthwise or tuple(conv.weight.shape) != tuple(w.shape) or conv.stride != (stride, stride):
            raise ValueError(f"layer {i} ({kind}, stride {stride}, weight {tuple(w.shape)}) does not match "
                             f"Avalanche's {conv} (weight {tuple(conv.weight.shape)})")
        same = SamePadConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, padding=0,
                             groups=conv.groups, bias=False)
        with torch.no_grad():
            same.weight.copy_(w)
            bn.weight.copy_(torch.from_numpy(weights[f"gamma_{i}"]))
            bn.bias.copy_(torch.from_numpy(weights[f"beta_{i}"]))
            bn.running_mean.copy_(torch.from_numpy(weights[f"mean_{i}"]))
            # BatchRenorm2D's eval mode divides by sqrt(running_var) without eps: fold TF's eps in here.
            bn.running_var.copy_(torch.from_numpy(weights[f"var_{i}"] + np.float32(eps)))
        bn.eps = eps
        block.conv = same
        block.activ = nn.ReLU6()
    model.output = nn.Linear(1024, num_classes, bias=False)
    return model


@contextlib.contextmanager
def ar1_uses_converted_model(weights: dict, num_classes: int):
    """While active, ``AR1(...)`` builds `tf_slim_mobilenet_v1` instead of downloading pytorchcv's weights."""
    import avalanche.training.supervised.ar1 as ar1_module

    def build(pretrained: bool = True, latent_layer_num: int = 19) -> nn.Module:
        return tf_slim_mobilenet_v1(weights, latent_layer_num, num_classes)

    with mock.patch.object(ar1_module, "MobilenetV1", build):
        yield


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC pixels -> float32 NCHW ``2 * pixel / 255 - 1`` (TF-slim's input range, as clq's export)."""
    x = torch.from_numpy(np.ascontiguousarray(np.asarray(images).transpose(0, 3, 1, 2))).float()
    return 2.0 * x / 255.0 - 1.0


@torch.no_grad()
def latent_check(model: nn.Module, weights: dict, tolerance: float) -> dict:
    """Compare the model's layer-l latents and pooled features with clq's reference outputs (eval mode)."""
    was_training = {n: m.training for n, m in model.named_modules()}
    model.eval()
    x = to_input(weights["ref_images"])
    lat = model.lat_features(x)
    feat = model.end_features(lat).flatten(1)
    for n, m in model.named_modules():
        m.train(was_training[n])
    out = {}
    for name, got, ref in (("latent", lat.numpy(), weights["ref_latents"].transpose(0, 3, 1, 2)),
                           ("features", feat.numpy(), weights["ref_features"])):
        if got.shape != ref.shape:
            raise SystemExit(f"latent check: {name} shape {got.shape} != clq's {ref.shape}")
        err = float(np.max(np.abs(got - ref)))
        scale = float(np.max(np.abs(ref)))
        out[name] = {"max_abs_error": err, "max_abs_reference": scale, "relative_error": err / max(scale, 1e-12),
                     "shape": list(ref.shape)}
    out["images"] = int(len(x))
    out["tolerance"] = tolerance
    out["passed"] = all(out[k]["relative_error"] <= tolerance for k in ("latent", "features"))
    return out


# --- the data ---------------------------------------------------------------------------------------------

class ImageArray(torch.utils.data.Dataset):
    """(``2 * pixel / 255 - 1`` NCHW image, label) pairs from uint8 NHWC arrays; ``targets`` for Avalanche."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images = images
        self.targets = [int(y) for y in labels]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i):
        return to_input(self.images[i : i + 1])[0], self.targets[i]


def make_benchmark(stream: dict):
    """One Avalanche experience per clq learning event (same images, same order), task label 0."""
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.utils.classification_dataset import _make_taskaware_classification_dataset

    images, labels = stream["train_images"], stream["train_labels"]
    index, offsets = stream["exp_index"], stream["exp_offsets"]
    datasets = []
    for e in range(len(offsets) - 1):
        idx = index[offsets[e] : offsets[e + 1]]
        ds = ImageArray(images[idx], labels[idx])
        datasets.append(_make_taskaware_classification_dataset(ds, task_labels=0, targets=ds.targets))
    return benchmark_from_datasets(train=datasets)


@torch.no_grad()
def evaluate(model: nn.Module, stream: dict, batch: int = 500) -> dict:
    """Accuracy of `model` (eval mode) on the whole test set: overall, per class, per session."""
    model.eval()
    images, labels, sessions = stream["test_images"], stream["test_labels"], stream["test_sessions"]
    pred = np.concatenate([model(to_input(images[i : i + batch])).argmax(1).numpy()
                           for i in range(0, len(labels), batch)])
    ok = pred == labels

    def acc(mask):
        return float(ok[mask].mean()) if mask.any() else None

    return {"accuracy": float(ok.mean()),
            "per_class": [acc(labels == c) for c in range(int(stream["num_classes"]))],
            "per_session": [acc(sessions == s) for s in range(len(stream["session_names"]))]}


# --- AR1, observed and (optionally) with each latent's own label -------------------------------------------

#: Positions (into a flattened latent) whose values identify a latent in `ReplayAudit`; copied, not summed.
_PROBES = 64


def _probe(acts: torch.Tensor) -> torch.Tensor:
    flat = acts.flatten(1)
    return flat[:, torch.linspace(0, flat.shape[1] - 1, _PROBES).long()].clone()


class ReplayAudit:
    """An observer plugin: the true label of every replay slot after each experience. Changes nothing.

    In the first epoch it keeps the labels of each mini-batch's new images, in the order AR1 appends their
    latents to ``cur_acts``. After the last epoch it saves the state of torch's generator, from which AR1's buffer
    update then draws ``randperm(len(cur_acts))[:h]`` (latents to store) and, after event 0,
    ``randperm(rm_sz)[:h]`` (slots to overwrite); replaying both draws on a copy of that state gives the true
    label of every slot. A few values of each stored latent check the replay: they must be those of the latent
    the draw picked.
    """

    def __init__(self):
        from avalanche.training.plugins import SupervisedPlugin

        outer = self

        class _Plugin(SupervisedPlugin):
            def before_training_exp(self, strategy, **kw):
                outer.exp = strategy.clock.train_exp_counter
                outer.labels, outer.rng_state, outer.probes = [], None, None

            def after_forward(self, strategy, **kw):
                if strategy.is_training and strategy.clock.train_exp_epochs == 0:
                    outer.labels.append(strategy.mb_y[: strategy.mb_x.shape[0]].detach().cpu().clone())

            def after_training_epoch(self, strategy, **kw):
                outer.rng_state = torch.get_rng_state()
                outer.probes = _probe(strategy.cur_acts)

            def after_training_exp(self, strategy, **kw):
                outer.update(strategy)

        self.plugin = _Plugin()
        self.true_labels: torch.Tensor | None = None
        self.probes: torch.Tensor | None = None
        self.history: list[dict] = []

    def update(self, strategy) -> None:
        labels = torch.cat(self.labels)
        g = torch.Generator()
        g.set_state(self.rng_state)
        n = len(labels)
        h = min(strategy.rm_sz // (self.exp + 1), n)
        picked = torch.randperm(n, generator=g)[:h]
        if self.exp == 0:
            slots = torch.arange(h)
            self.true_labels = labels[picked].clone()
        else:
            slots = torch.randperm(self.true_labels.size(0), generator=g)[:h]
            self.true_labels[slots] = labels[picked]
        stored = strategy.rm[0][slots]
        if not torch.equal(_probe(stored), self.probes[picked]):
            raise RuntimeError(f"replay audit lost track of AR1's buffer update in experience {self.exp}")
        wrong = strategy.rm[1] != self.true_labels
        self.history.append({"event": self.exp, "buffer": int(len(wrong)), "wrong_labels": int(wrong.sum()),
                             "wrong_fraction": float(wrong.float().mean()),
                             "wrong_fraction_of_new": float(wrong[slots].float().mean()),
                             "buffer_class_histogram": torch.bincount(strategy.rm[1]).tolist(),
                             "true_class_histogram": torch.bincount(self.true_labels).tolist()})


def ar1_own_labels_class():
    """`AR1OwnLabels`, defined once Avalanche is imported."""
    from avalanche.training import AR1

    class AR1OwnLabels(AR1):
        """AR1 whose replay buffer stores each latent with the label it came with (``--fix-replay-labels``).

        AR1 0.6.0 pairs ``cur_acts[idx]`` (first-epoch loader order) with ``experience.dataset.targets[idx]``
        (dataset order). Here the first epoch also collects the labels of each mini-batch's new images beside
        their latents, and the buffer update is AR1's with those labels in place of ``targets[idx]``: same
        ``h``, same two ``randperm`` draws, same slots.
        """

        def _before_training_exp(self, **kwargs):
            self.cur_labels = []
            super()._before_training_exp(**kwargs)

        def _after_forward(self, **kwargs):
            if self.clock.train_exp_epochs == 0:
                self.cur_labels.append(self.mb_y[: self.mb_x.shape[0]].detach().cpu().clone())
            super()._after_forward(**kwargs)

        def _after_training_exp(self, **kwargs):
            labels = torch.cat(self.cur_labels)
            assert len(labels) == self.cur_acts.size(0)
            h = min(self.rm_sz // (self.clock.train_exp_counter + 1), self.cur_acts.size(0))
            idxs_cur = torch.randperm(self.cur_acts.size(0))[:h]
            rm_add = (self.cur_acts[idxs_cur], labels[idxs_cur].flatten())
            if self.clock.train_exp_counter == 0:
                self.rm = rm_add
            else:
                idxs_2_replace = torch.randperm(self.rm[0].size(0))[:h]
                self.rm[0][idxs_2_replace] = rm_add[0]
                self.rm[1][idxs_2_replace] = rm_add[1]
            self.cur_acts = torch.empty(0)
            self.cur_labels = []
            super(AR1, self)._after_training_exp(**kwargs)  # plugins (CWR*, clock), skipping AR1's own update

    return AR1OwnLabels


def make_ar1(weights: dict, num_classes: int, latent_layer: int, rm_sz: int, fix_replay_labels: bool,
             plugins: list, train_epochs: int = 4):
    from avalanche.training import AR1
    from avalanche.training.plugins import EvaluationPlugin

    cls = ar1_own_labels_class() if fix_replay_labels else AR1
    with ar1_uses_converted_model(weights, num_classes), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The AR1 strategy implementation is in an alpha stage")
        return cls(latent_layer_num=latent_layer, freeze_below_layer=f"lat_features.{latent_layer}.bn", rm_sz=rm_sz,
                   train_mb_size=128, train_epochs=train_epochs, lr=1e-3, inc_lr=5e-5, device="cpu",
                   evaluator=EvaluationPlugin(loggers=[]), plugins=plugins)


# --- threads ----------------------------------------------------------------------------------------------

def _step_seconds(model: nn.Module, x: torch.Tensor, latents: torch.Tensor | None, threads: int, steps: int = 3) -> float:
    """Best time of an AR1 training step (forward, backward, SGD with lr 0) with `threads` torch threads."""
    torch.set_num_threads(threads)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.0)
    y = torch.zeros(len(x) + (0 if latents is None else len(latents)), dtype=torch.long)
    best = float("inf")
    for i in range(steps + 1):  # the first step warms up
        t0 = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(model(x, latent_input=latents), y).backward()
        opt.step()
        if i:
            best = min(best, time.perf_counter() - t0)
    return best


def choose_threads(model: nn.Module, stream: dict, new_per_batch: int, replays_per_batch: int,
                   candidates=(1, 2)) -> dict:
    """The faster torch thread count for an event-0 step and for a later-event step, timed on a copy of `model`.

    Event 0 runs the whole network on 128 images (large operations); later events run ``lat_features`` on a few
    new images and the layers above l on 128 latents (many small operations), where OpenMP's spinning threads
    lose most when other jobs share the cores. The copy is trained with lr 0; `model` and the RNG are untouched.
    """
    import copy

    rng_state = torch.get_rng_state()
    m = copy.deepcopy(model)
    m.eval()
    m.end_features.train()
    m.output.train()
    x = to_input(stream["train_images"][:128])
    with torch.no_grad():
        latents = m.lat_features(x[:replays_per_batch])
    times = {"event0": {}, "later": {}}
    for t in candidates:
        times["event0"][t] = _step_seconds(m, x, None, t)
        times["later"][t] = _step_seconds(m, x[:new_per_batch], latents, t)
    torch.set_rng_state(rng_state)
    return {"event0": min(times["event0"], key=times["event0"].get),
            "later": min(times["later"], key=times["later"].get),
            "step_s": {k: {str(t): round(v, 4) for t, v in d.items()} for k, d in times.items()}}


# --- the run ----------------------------------------------------------------------------------------------

def _load(path: str) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _versions() -> dict:
    import avalanche

    out = {"python": platform.python_version(), "torch": torch.__version__, "avalanche": avalanche.__version__,
           "numpy": np.__version__}
    try:
        out["pytorchcv"] = importlib.metadata.version("pytorchcv")
    except importlib.metadata.PackageNotFoundError:
        pass
    return out


def _write_json(path: str, obj: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stream", help="stream .npz from bench/peer/export.py (not needed with --check-only)")
    ap.add_argument("--weights", required=True, help="weights .npz from bench/peer/export.py")
    ap.add_argument("--out", help="results JSON")
    ap.add_argument("--seed", type=int, default=None, help="torch seed (default: the stream's seed)")
    ap.add_argument("--fix-replay-labels", action="store_true",
                    help="store each replay latent with its own label (AR1OwnLabels) instead of AR1's pairing")
    ap.add_argument("--check-only", action="store_true", help="only build the model and run the latent check")
    ap.add_argument("--tolerance", type=float, default=1e-3, help="largest relative error of the latent check")
    ap.add_argument("--threads", default="2",
                    help="torch threads, or 'auto': the faster of 1 and 2, timed separately for event 0 and for later "
                         "events (`choose_threads`)")
    ap.add_argument("--max-events", type=int, default=None, help="first N events only (debugging)")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()

    if args.threads != "auto" and not (args.threads.isdigit() and int(args.threads) > 0):
        raise SystemExit(f"--threads must be a positive integer or 'auto', got {args.threads!r}")
    torch.set_num_threads(2 if args.threads == "auto" else int(args.threads))
    weights = _load(args.weights)
    stream = None if args.check_only else _load(args.stream)
    latent_layer = int(weights["latent_layer"])
    num_classes = int(weights["num_classes"])
    if stream is not None:
        for key in ("latent_layer", "num_classes", "input_size"):
            if int(stream[key]) != int(weights[key]):
                raise SystemExit(f"stream and weights disagree on {key}: {int(stream[key])} vs {int(weights[key])}")
    seed = args.seed if args.seed is not None else (int(stream["seed"]) if stream is not None else 0)
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)

    audit = ReplayAudit()
    rm_sz = int(stream["replay_size"]) if stream is not None else 1500
    strategy = make_ar1(weights, num_classes, latent_layer, rm_sz, args.fix_replay_labels, [audit.plugin])
    check = latent_check(strategy.model, weights, args.tolerance)
    print(f"latent check (layer {latent_layer}, {check['images']} images): max abs error "
          f"{check['latent']['max_abs_error']:.3g} (relative {check['latent']['relative_error']:.3g}); pooled "
          f"features {check['features']['max_abs_error']:.3g} (relative {check['features']['relative_error']:.3g})",
          flush=True)
    if not check["passed"]:
        raise SystemExit(f"latent check FAILED: relative error above {args.tolerance}: the converted network does "
                         "not compute clq's function")
    if args.check_only:
        if args.out:
            _write_json(args.out, {"latent_check": check, "versions": _versions()})
        return {"latent_check": check}

    bm = make_benchmark(stream)
    experiences = list(bm.train_stream)[: args.max_events]
    if args.threads == "auto":
        sizes = np.diff(stream["exp_offsets"])
        later = int(sizes[1]) if len(sizes) > 1 else 1
        new_per_batch = max(1, later // ((later + rm_sz) // strategy.train_mb_size))  # AR1's split
        threads = choose_threads(strategy.model, stream, new_per_batch, strategy.train_mb_size - new_per_batch)
        print(f"threads: {threads['event0']} for event 0 and evaluation, {threads['later']} for later events "
              f"(step seconds {threads['step_s']})", flush=True)
    else:
        threads = {"event0": int(args.threads), "later": int(args.threads)}
    rows, train_s, eval_s = [], [], []
    for e, exp in enumerate(experiences):
        torch.set_num_threads(threads["event0"] if e == 0 else threads["later"])
        t0 = time.perf_counter()
        strategy.train(exp)
        t1 = time.perf_counter()
        torch.set_num_threads(threads["event0"])
        ev = evaluate(strategy.model, stream)
        t2 = time.perf_counter()
        train_s.append(t1 - t0)
        eval_s.append(t2 - t1)
        audit_row = audit.history[-1]
        rows.append({"event": e, **ev, "train_s": round(t1 - t0, 3), "eval_s": round(t2 - t1, 3),
                     "new_per_batch": strategy.train_mb_size - strategy.replay_mb_size,
                     "replays_per_batch": strategy.replay_mb_size,
                     "replay_wrong_label_fraction": audit_row["wrong_fraction"]})
        print(f"event {e:3d}: accuracy {ev['accuracy']:.4f}  train {t1 - t0:6.1f} s  eval {t2 - t1:5.1f} s  "
              f"wrong replay labels {audit_row['wrong_fraction']:.3f}", flush=True)

    acc = [r["accuracy"] for r in rows]
    result = {
        "system": "avalanche-ar1" + ("-own-labels" if args.fix_replay_labels else ""),
        "flags": {"fix_replay_labels": args.fix_replay_labels, "threads": args.threads, "seed": seed,
                  "threads_used": threads,
                  "max_events": args.max_events},
        "hyper_parameters": {"latent_layer_num": latent_layer, "freeze_below_layer": f"lat_features.{latent_layer}.bn",
                             "rm_sz": rm_sz, "train_mb_size": strategy.train_mb_size,
                             "train_epochs": strategy.train_epochs, "lr": strategy.lr, "inc_lr": strategy.inc_lr,
                             "momentum": strategy.momentum, "l2": strategy.l2,
                             "inc_update_rate": strategy.inc_update_rate, "max_r_max": strategy.max_r_max,
                             "max_d_max": strategy.max_d_max},
        "accuracy_per_event": acc,
        "final_accuracy": acc[-1],
        "average_accuracy": float(np.mean(acc)),
        "events": rows,
        "session_names": [str(s) for s in stream["session_names"]],
        "replay_labels": {"wrong_fraction_after_event0": audit.history[0]["wrong_fraction"],
                          "per_event": audit.history},
        "wall_time_s": {"event0_train": round(train_s[0], 3), "later_events_train": round(sum(train_s[1:]), 3),
                        "evaluation": round(sum(eval_s), 3), "total": round(time.perf_counter() - t_start, 3)},
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "latent_check": check,
        "versions": _versions(),
        "stream": {"events": len(experiences), "train_images": int(len(stream["exp_index"])),
                   "test_images": int(len(stream["test_labels"])), "input_size": int(stream["input_size"]),
                   "seed": int(stream["seed"]), "overrides": [str(o) for o in stream["overrides"]]},
    }
    if args.out:
        _write_json(args.out, result)
    print(f"final accuracy {acc[-1]:.4f}, average {np.mean(acc):.4f}; wrong replay labels after event 0: "
          f"{audit.history[0]['wrong_fraction']:.3f}; wall {result['wall_time_s']}; peak RSS "
          f"{result['peak_rss_mb']:.0f} MB", flush=True)
    return result


if __name__ == "__main__":
    main()
