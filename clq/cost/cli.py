"""``clq-cost``: the cost report of one configuration, from the same Hydra config groups as ``clq-run``.

This is the only module of `clq.cost` that reads a config; it turns it into typed arguments of
`clq.cost.cost_report`. Bad input is reported as one line on stderr with exit code 2 (no traceback).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from clq.checks import check_number
from clq.cost.report import cost_report, format_table
from clq.cost.targets import available_targets, load_target, target_from_dict
from clq.model.specs import mobilenet_v1_specs

__all__ = ["main", "report_from_config", "render"]

_FORMATS = ("table", "json")
# ../../conf from this file, made absolute: for a console script Hydra would read a relative config_path as a
# Python package path ("conf" is not a package), so it must be a file-system path.
_CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def report_from_config(cfg: DictConfig) -> dict:
    """Config -> typed arguments -> `cost_report` dict. Raises ValueError on bad input."""
    if cfg.format not in _FORMATS:
        raise ValueError(f"format must be one of {list(_FORMATS)}, got {cfg.format!r}")
    m = cfg.model
    specs = mobilenet_v1_specs(width=m.width, input_size=m.input_size, num_classes=m.num_classes,
                               activation=m.activation)
    target_dict: Any = OmegaConf.to_container(cfg.target, resolve=True)
    target = target_from_dict(target_dict, source=f"conf/target/{target_dict.get('name', '?')}.yaml")
    l1_kib = cfg.l1_kib
    if l1_kib is not None:
        check_number(l1_kib, "l1_kib (a size in KiB, or null)", 0.0)
    momentum = check_number(cfg.train.momentum, "train.momentum", 0.0)
    return cost_report(
        specs,
        latent_layer=cfg.latent_layer,
        buffer_size=cfg.replay.size,
        lr_bits=cfg.replay.bits,
        new_images=cfg.data.images_per_event,
        epochs=cfg.train.epochs,
        batch_size=cfg.train.batch_size,
        target=target,
        frozen_bits=cfg.quant.frozen_bits,
        optimizer_slots=1 if momentum > 0 else 0,
        backward_error=cfg.backward_error,
        l1_bytes=None if l1_kib is None else int(round(l1_kib * 1024)),
        compare=[load_target(str(n)) for n in (cfg.compare or [])],  # null: no comparison
    )


def render(cfg: DictConfig) -> str:
    """The text ``clq-cost`` prints for a config (a table, or one JSON document)."""
    rep = report_from_config(cfg)
    if cfg.format == "json":
        return json.dumps(rep, indent=2)
    return format_table(rep)


def _fail(msg: str) -> None:
    print(f"clq-cost: error: {msg}", file=sys.stderr)
    sys.exit(2)


@hydra.main(version_base="1.3", config_path=_CONF_DIR, config_name="cost")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        text = render(cfg)
    except ValueError as e:
        _fail(str(e))
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `clq-cost | head`: stop quietly, like other CLI tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _check_target_override(argv: list[str]) -> None:
    """Hydra would reject an unknown ``target=`` with a traceback-free message but exit code 1; report it
    like every other bad value (field, allowed values, exit 2). Skipped when a search path adds targets."""
    if any(a.startswith(("hydra.searchpath", "+hydra.searchpath")) for a in argv):
        return
    for a in argv:
        if a.startswith("target="):
            name = a.split("=", 1)[1]
            if name not in available_targets():
                _fail(f"target must be one of {list(available_targets())}, got {name!r} "
                      f"(add a target by writing conf/target/<name>.yaml)")


def main() -> None:
    """Console entry point (``clq-cost = clq.cost.cli:main``)."""
    _check_target_override(sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
