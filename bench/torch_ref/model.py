"""MobileNet-V1 as `torch.nn` modules, built from clq's layer specs (one source of truth for the network).

Layout NCHW float32 (PyTorch's default, as in ar1-pytorch). Padding is TF 'SAME' like `clq.model.forward`:
stride-2 layers on even inputs pad (0, 1), which `nn.Conv2d(padding=...)` cannot express, so every conv is
preceded by an explicit `F.pad`.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clq.model.forward import BN_EPS, same_padding
from clq.model.specs import LayerSpec

__all__ = ["MobileNetBN", "FrozenStage", "AdaptiveStage", "fold_batch_norm", "params_from_clq"]


def _conv(spec: LayerSpec, bias: bool) -> nn.Module:
    cin, cout, k = spec.in_channels, spec.out_channels, spec.kernel
    groups = cin if spec.kind == "dw" else 1
    return nn.Conv2d(cin, cout, k, spec.stride, padding=0, groups=groups, bias=bias)


class _Layer(nn.Module):
    """One conv/dw/pw layer: SAME pad, conv, optional BN, activation."""

    def __init__(self, spec: LayerSpec, batch_norm: bool):
        super().__init__()
        self.spec = spec
        h, w = spec.in_shape[:2]
        (pt, pb), (pl, pr) = same_padding(h, spec.kernel, spec.stride), same_padding(w, spec.kernel, spec.stride)
        self.pad = (pl, pr, pt, pb)
        self.conv = _conv(spec, bias=not batch_norm)
        self.bn = nn.BatchNorm2d(spec.out_channels, eps=BN_EPS) if batch_norm else None
        self.relu6 = spec.activation == "relu6"
        self.act = spec.activation != "none"

    def forward(self, x):
        if any(self.pad):
            x = F.pad(x, self.pad)
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.act:
            x = F.relu6(x) if self.relu6 else F.relu(x)
        return x


def _he_init(layer: _Layer) -> None:
    """He-normal weights as `clq.model.forward.init_params` (fan-in K*K for depthwise), zero biases."""
    spec = layer.spec
    fan_in = spec.kernel * spec.kernel * (1 if spec.kind == "dw" else spec.in_channels)
    nn.init.normal_(layer.conv.weight, 0.0, math.sqrt(2.0 / fan_in))
    if layer.conv.bias is not None:
        nn.init.zeros_(layer.conv.bias)


class MobileNetBN(nn.Module):
    """The whole network with batch norm (event 0): conv layers, global average pool, linear classifier.

    forward(x float32 [B, 3, H, W]) -> logits float32 [B, num_classes].
    """

    def __init__(self, specs: Sequence[LayerSpec]):
        super().__init__()
        self.specs = tuple(specs)
        self.layers = nn.ModuleList(_Layer(s, batch_norm=True) for s in specs if s.kind in ("conv", "dw", "pw"))
        fc = specs[-1]
        self.fc = nn.Linear(fc.in_channels, fc.out_channels)
        for layer in self.layers:
            _he_init(layer)
        nn.init.normal_(self.fc.weight, 0.0, math.sqrt(2.0 / fc.in_channels) * math.sqrt(0.5))
        nn.init.zeros_(self.fc.bias)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.fc(x.mean(dim=(2, 3)))


def fold_batch_norm(net: MobileNetBN, stats: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> list[dict]:
    """Folded parameters per spec, ``{'w', 'b'}`` torch tensors (``{}`` for the pool), as clq's `fold_batch_norm`.

    ``w' = w * gamma / sqrt(var + eps)``, ``b' = beta - mean * gamma / sqrt(var + eps)``.

    Args:
      stats: (mean, var) per conv layer, population statistics over the first experience.
    """
    out, it = [], iter(zip(net.layers, stats))
    for spec in net.specs:
        if spec.kind == "pool":
            out.append({})
        elif spec.kind == "linear":
            out.append({"w": net.fc.weight.detach().clone(), "b": net.fc.bias.detach().clone()})
        else:
            layer, (mean, var) = next(it)
            g = layer.bn.weight.detach() / torch.sqrt(var + BN_EPS)
            out.append({"w": layer.conv.weight.detach() * g.view(-1, 1, 1, 1), "b": layer.bn.bias.detach() - mean * g})
    return out


def params_from_clq(specs: Sequence[LayerSpec], folded: Sequence[dict]) -> list[dict]:
    """clq's folded parameters (HWIO conv, HW1C depthwise, IO pointwise and linear) in PyTorch's layout.

    Returns, per spec, ``{'w', 'b'}`` float32 tensors (OIHW conv/pointwise, C1HW depthwise, OI linear), ``{}``
    for the pool, ready for `FrozenStage` / `AdaptiveStage`.
    """
    out = []
    for spec, p in zip(specs, folded):
        if not p:
            out.append({})
            continue
        w = np.asarray(p["w"])
        if spec.kind in ("conv", "dw"):
            w = w.transpose(3, 2, 0, 1)
        elif spec.kind == "pw":
            w = w.T[:, :, None, None]
        else:
            w = w.T
        out.append({"w": torch.from_numpy(np.ascontiguousarray(w)), "b": torch.from_numpy(np.array(p["b"]))})
    return out


class _Stage(nn.Module):
    """A slice of the network in folded form (conv + bias + activation; pool; linear)."""

    def __init__(self, specs: Sequence[LayerSpec], folded: Sequence[dict]):
        super().__init__()
        self.specs = tuple(specs)
        mods = []
        for spec, p in zip(specs, folded):
            if spec.kind == "pool":
                mods.append(None)
            elif spec.kind == "linear":
                lin = nn.Linear(spec.in_channels, spec.out_channels)
                with torch.no_grad():
                    lin.weight.copy_(p["w"])
                    lin.bias.copy_(p["b"])
                mods.append(lin)
            else:
                layer = _Layer(spec, batch_norm=False)
                with torch.no_grad():
                    layer.conv.weight.copy_(p["w"])
                    layer.conv.bias.copy_(p["b"])
                mods.append(layer)
        self.mods = nn.ModuleList(m for m in mods if m is not None)  # registers the parameters
        self._order = mods  # aligned with specs (None for the pool)

    def forward(self, x):
        for spec, m in zip(self.specs, self._order):
            if spec.kind == "pool":
                x = x.mean(dim=(2, 3), keepdim=True)
            elif spec.kind == "linear":
                x = m(x.flatten(1))
            else:
                x = m(x)
        return x


class FrozenStage(_Stage):
    """Layers 0..l, folded, FP32, no gradients: pixels float32 [B, 3, H, W] -> latents [B, C, H', W']."""

    def __init__(self, specs, folded):
        super().__init__(specs, folded)
        self.requires_grad_(False)
        self.eval()


class AdaptiveStage(_Stage):
    """Layers l+1..28, folded, FP32, trainable: latents [B, C, H', W'] -> logits [B, num_classes]."""
