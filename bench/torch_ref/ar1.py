"""The ar1-pytorch latent-replay loop, ported to clq's stream, model and hyper-parameters (PyTorch, CPU).

What is taken from ar1-pytorch (`ar1free_lat_replay.py`) as it is there:

* every training iteration pushes its new images through the frozen stage (`model(x_mb, latent_input=...)`,
  the frozen layers have `requires_grad=False`), and the latents of the first epoch are kept for the buffer;
* replays are FP32 latents concatenated with the new latents at the latent layer;
* after the event, ``h = min(N // (i+1), n_new)`` random new latents overwrite ``h`` random buffer slots
  (event 0 fills it);
* after every event the whole network is evaluated on the test images (`get_accuracy`).

What is clq's, so that both run the same experiment (conf/config.yaml): the stream, MobileNet-V1 0.5/32 px
trained from scratch in event 0 (12 epochs, SGD lr 0.05 with cosine decay, batch 64, momentum 0.9, weight
decay 5e-4), batch norm folded with population statistics after event 0 (Ravaglia et al. replace BatchReNorm
with BatchNorm and freeze its statistics), learning events with 4 epochs of SGD lr 0.01, mini-batches of
``round(128 n/(n+N))`` new latents plus replays and ``ceil(n/new)`` iterations per epoch, both visited in a
fresh random order every epoch.

Precision is the reference's: FP32 frozen stage, FP32 latents ("FP32 + FP32" in clq's naming).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from bench.torch_ref.model import AdaptiveStage, FrozenStage, MobileNetBN, fold_batch_norm
from clq.train import TrainConfig, minibatch_composition

__all__ = ["ReferenceConfig", "run_reference"]


@dataclass(frozen=True)
class ReferenceConfig:
    """What the reference run needs beyond clq's own training hyper-parameters.

    train: clq's `TrainConfig` (epochs, batch sizes, learning rates, momentum, weight decay of event 0 and of
      the learning events), so that both sides read one set of values.
    cache_latents: False is the ar1-pytorch loop (frozen stage in every iteration, whole-network test
      evaluation after every event); True computes each image's latent once and the test latents once, as
      clq does, to separate what the pipeline buys from what compilation buys.
    threads: `torch.set_num_threads` (None keeps PyTorch's default, one per core).
    """

    latent_layer: int = 19
    replay_size: int = 1500
    train: TrainConfig = field(default_factory=TrainConfig)
    cache_latents: bool = False
    threads: int | None = None


def _pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, C] -> float32 [N, C, H, W] in [0, 1] (clq's input convention)."""
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float().div_(255.0)


def _first_event(specs, images, labels, cfg: ReferenceConfig, rng: np.random.Generator):
    """Event 0: the whole network with batch norm, from scratch; returns folded parameters and history."""
    hp = cfg.train  # clq's hyper-parameters
    net = MobileNetBN(specs)
    n = len(images)
    bs = min(hp.first_batch_size, n)
    steps = n // bs
    total = max(1, hp.first_epochs * steps)
    opt = torch.optim.SGD(net.parameters(), lr=hp.first_lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
    x_all, y_all = _pixels(images), torch.from_numpy(labels.astype(np.int64))
    history, t = [], 0
    net.train()
    for _ in range(hp.first_epochs):
        perm = torch.from_numpy(rng.permutation(n)[: steps * bs].reshape(steps, bs))
        losses, accs = [], []
        for idx in perm:
            for g in opt.param_groups:  # optax.cosine_decay_schedule(lr, total) evaluated at step t
                g["lr"] = hp.first_lr * 0.5 * (1 + math.cos(math.pi * min(t, total) / total))
            x, y = x_all[idx], y_all[idx]
            opt.zero_grad(set_to_none=True)
            logits = net(x)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
            accs.append((logits.argmax(1) == y).float().mean())
            t += 1
        history.append((float(torch.stack(losses).mean()), float(torch.stack(accs).mean())))
    # Population statistics as clq's `population_bn_stats`: batch-statistics forward over equal batches,
    # means of the batch means and of the batch second moments.
    moments = [[] for _ in net.layers]
    hooks = [layer.bn.register_forward_hook(
        lambda m, inp, out, k=k: moments[k].append((inp[0].mean((0, 2, 3)), inp[0].var((0, 2, 3), unbiased=False))))
        for k, layer in enumerate(net.layers)]
    with torch.inference_mode():
        for s in range(0, steps * bs, bs):
            net(x_all[s : s + bs])
    for h in hooks:
        h.remove()
    stats = []
    for per_batch in moments:
        mean = torch.stack([m for m, _ in per_batch]).mean(0)
        sq = torch.stack([v + m**2 for m, v in per_batch]).mean(0)
        stats.append((mean, torch.clamp(sq - mean**2, min=0.0)))
    return fold_batch_norm(net, stats), history


class _Timer:
    def __init__(self):
        self.totals: dict[str, float] = {}

    def add(self, name: str, t0: float) -> None:
        self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - t0


def run_reference(stream, specs, cfg: ReferenceConfig, seed: int, log=lambda msg: None) -> dict:
    """Run the reference continual-learning experiment over a clq `Stream`.

    Args:
      stream: `clq.data.stream.Stream` (uint8 images, int32 labels).
      specs: the whole network's clq layer specs.
    Returns:
      accuracy_per_event, final_accuracy, timing_s (first_event_s, frozen_pass_s, train_s, eval_s, buffer_s),
      wall_time_s, and the configuration.
    """
    hp = cfg.train  # clq's hyper-parameters
    t_start = time.perf_counter()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    timer = _Timer()
    l = cfg.latent_layer
    exp0 = stream.experiences[0]

    t0 = time.perf_counter()
    folded, history = _first_event(specs, stream.train_images[exp0], stream.train_labels[exp0], cfg, rng)
    timer.add("first_event_s", t0)
    frozen = FrozenStage(specs[: l + 1], folded[: l + 1])
    model = AdaptiveStage(specs[l + 1 :], folded[l + 1 :])
    opt = torch.optim.SGD(model.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)

    def latents(images: np.ndarray) -> torch.Tensor:
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = torch.cat([frozen(_pixels(images[s : s + hp.eval_batch_size]))
                             for s in range(0, len(images), hp.eval_batch_size)])
        timer.add("frozen_pass_s", t0)
        return out

    test_y = torch.from_numpy(stream.test_labels.astype(np.int64))
    test_lat = latents(stream.test_images) if cfg.cache_latents else None

    def evaluate() -> float:
        t0 = time.perf_counter()
        model.eval()
        correct = 0
        with torch.inference_mode():
            for s in range(0, len(test_y), hp.eval_batch_size):
                if cfg.cache_latents:
                    x = test_lat[s : s + hp.eval_batch_size]
                else:  # ar1-pytorch's get_accuracy: the whole network on the test images
                    x = frozen(_pixels(stream.test_images[s : s + hp.eval_batch_size]))
                correct += int((model(x).argmax(1) == test_y[s : s + hp.eval_batch_size]).sum())
        model.train()
        timer.add("eval_s", t0)
        return correct / len(test_y)

    # Event 0 fills the buffer with min(N, n) of its latents.
    n_slots = cfg.replay_size
    lat0 = latents(stream.train_images[exp0])
    t0 = time.perf_counter()
    buf_x = torch.zeros((n_slots, *lat0.shape[1:]))
    buf_y = torch.full((n_slots,), -1, dtype=torch.int64)
    filled = torch.zeros(n_slots, dtype=torch.bool)

    def buffer_add(lat: torch.Tensor, lab: torch.Tensor, event: int) -> None:
        n_new = len(lab)
        n_empty = int((~filled).sum())
        h = min(max(n_slots // (event + 1), n_empty), n_new)
        items = torch.from_numpy(rng.choice(n_new, h, replace=False))
        empty, full = torch.nonzero(~filled).flatten(), torch.nonzero(filled).flatten()
        slots = torch.cat([empty[torch.from_numpy(rng.permutation(len(empty)))],
                           full[torch.from_numpy(rng.permutation(len(full)))]])[:h]
        buf_x[slots], buf_y[slots], filled[slots] = lat[items], lab[items], True

    if n_slots:
        buffer_add(lat0, torch.from_numpy(stream.train_labels[exp0].astype(np.int64)), 0)
    timer.add("buffer_s", t0)
    accuracy = [evaluate()]
    log(f"reference event 0: accuracy {accuracy[-1]:.4f}")

    for i in range(1, stream.num_events):
        idx = stream.experiences[i]
        images, labels = stream.train_images[idx], torch.from_numpy(stream.train_labels[idx].astype(np.int64))
        n_new = len(idx)
        a, b, iters = minibatch_composition(n_new, n_slots, hp.batch_size)
        use_replay = n_slots > 0 and b > 0
        if cfg.cache_latents:
            cur = latents(images)
        else:
            pixels = _pixels(images)
            cur = None  # filled during epoch 0 from the training iterations' own frozen passes
        n_filled = int(filled.sum())
        filled_slots = torch.nonzero(filled).flatten()
        for epoch in range(hp.epochs):
            new_order = torch.from_numpy(rng.permutation(n_new))
            rep_order = filled_slots[torch.from_numpy(rng.permutation(n_filled))] if use_replay else None
            for it in range(iters):
                rows = new_order[(it * a + torch.arange(a)) % n_new]
                if cfg.cache_latents:
                    x = cur[rows]
                else:
                    t0 = time.perf_counter()
                    with torch.no_grad():
                        x = frozen(pixels[rows])
                    if epoch == 0:
                        if cur is None:
                            cur = torch.empty((n_new, *x.shape[1:]))
                        cur[rows] = x
                    timer.add("frozen_pass_s", t0)
                t0 = time.perf_counter()
                y = labels[rows]
                if use_replay:
                    slots = rep_order[(it * b + torch.arange(b)) % n_filled]
                    x, y = torch.cat([x, buf_x[slots]]), torch.cat([y, buf_y[slots]])
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                timer.add("train_s", t0)
        t0 = time.perf_counter()
        if n_slots:
            buffer_add(cur, labels, i)
        timer.add("buffer_s", t0)
        accuracy.append(evaluate())
        if i % 10 == 0 or i == stream.num_events - 1:
            log(f"reference event {i}: accuracy {accuracy[-1]:.4f}")

    return {
        "accuracy_per_event": accuracy,
        "final_accuracy": accuracy[-1],
        "first_event_history": history,
        "timing_s": {k: round(v, 3) for k, v in timer.totals.items()},
        "wall_time_s": time.perf_counter() - t_start,
        "config": dataclasses.asdict(cfg) | {"seed": seed, "torch": torch.__version__, "threads_used": torch.get_num_threads()},
    }
