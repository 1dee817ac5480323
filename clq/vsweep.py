"""`clq-vsweep` (also `python -m clq.vsweep`): an alias of ``clq-run -m hydra/launcher=clq_vectorized``.

    clq-vsweep vsweep.bits=[8,6,4] vsweep.seeds=[0,1,2] latent_layer=23
    # is exactly
    clq-run -m hydra/launcher=clq_vectorized replay.bits=8,6,4 seed=0,1,2 latent_layer=23

``vsweep.bits`` and ``vsweep.seeds`` (lists) become the multirun's ``replay.bits`` and ``seed`` sweeps,
``vsweep.members_per_batch`` the launcher's ``hydra.launcher.members_per_batch``; every other argument is passed
on unchanged. The vectorizing launcher runs the members that differ only in ``replay.bits`` as one compiled
program (`clq.launcher`), and each member is the ``clq-run`` of its seed (its own stream and event 0).
Defaults, when absent: ``vsweep.bits=[8,6,4]``, ``vsweep.seeds=[0,1,2,3,4]``.
"""

from __future__ import annotations

import sys

__all__ = ["translate", "main"]

DEFAULTS = {"vsweep.bits": "[8,6,4]", "vsweep.seeds": "[0,1,2,3,4]"}


def _list(key: str, value: str) -> str:
    v = value.strip()
    if not (v.startswith("[") and v.endswith("]")) or not v[1:-1].strip():
        raise ValueError(f"{key} must be a non-empty list such as [8,6,4], got {value!r}")
    return ",".join(x.strip() for x in v[1:-1].split(","))


def translate(argv: list[str]) -> list[str]:
    """clq-vsweep's arguments -> clq-run's (`main` runs them). Raises ValueError naming a bad vsweep key."""
    given = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in argv if a.startswith("vsweep.") and "=" in a}
    unknown = sorted(set(given) - {"vsweep.bits", "vsweep.seeds", "vsweep.members_per_batch"})
    if unknown:
        raise ValueError(f"{unknown[0]} is not a key of vsweep (allowed: bits, seeds, members_per_batch)")
    vals = {**DEFAULTS, **given}
    out = ["-m", "hydra/launcher=clq_vectorized", f"replay.bits={_list('vsweep.bits', vals['vsweep.bits'])}",
           f"seed={_list('vsweep.seeds', vals['vsweep.seeds'])}"]
    if "vsweep.members_per_batch" in vals:
        out.append(f"hydra.launcher.members_per_batch={vals['vsweep.members_per_batch']}")
    return out + [a for a in argv if not a.startswith("vsweep.")]


def main() -> None:
    """Console-script entry point: run clq-run with the translated arguments in this process."""
    try:
        args = translate(sys.argv[1:])
    except ValueError as e:
        print(f"clq-vsweep: config error: {e}", file=sys.stderr)
        sys.exit(2)
    from clq.run import main as clq_run

    sys.argv = [sys.argv[0], *args]
    clq_run()


if __name__ == "__main__":
    main()
