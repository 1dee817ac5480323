"""``python -m clq.analysis [SWEEP_DIR]``: the trade-off report of a sweep.

Writes ``<SWEEP_DIR>/report.html`` (tables and plots, self-contained) and ``<SWEEP_DIR>/sweep.csv``;
``--notebook`` also executes notebooks/tradeoffs.ipynb on the sweep into ``<SWEEP_DIR>/tradeoffs.ipynb``.
SWEEP_DIR defaults to the newest sweep under ./multirun.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time

from clq.analysis.notebook import run_notebook
from clq.analysis.report import render_report


def newest_sweep(base: str = "multirun") -> str | None:
    """The most recently modified folder under `base` that holds a multirun.yaml (Hydra's sweep marker)."""
    found = glob.glob(os.path.join(base, "**", "multirun.yaml"), recursive=True)
    return os.path.dirname(max(found, key=os.path.getmtime)) if found else None


def execute_notebook(sweep_dir: str, out: str, timeout: int = 600) -> str:
    """Run notebooks/tradeoffs.ipynb with CLQ_SWEEP=sweep_dir and save it, outputs included, to `out`."""
    import nbformat

    nb = run_notebook("tradeoffs.ipynb", {"CLQ_SWEEP": os.path.abspath(sweep_dir)}, timeout)
    nbformat.write(nb, out)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m clq.analysis", description=__doc__.splitlines()[0])
    p.add_argument("sweep_dir", nargs="?", help="sweep folder (default: newest under ./multirun)")
    p.add_argument("--out", help="HTML path (default: <sweep_dir>/report.html)")
    p.add_argument("--wandb", action="store_true", help="collect the offline wandb runs, not results.json")
    p.add_argument("--notebook", action="store_true", help="also execute notebooks/tradeoffs.ipynb on the sweep")
    a = p.parse_args(argv)
    sweep = a.sweep_dir or newest_sweep()
    if sweep is None or not os.path.isdir(sweep):
        print(f"python -m clq.analysis: no sweep folder {'found under ./multirun' if sweep is None else sweep!r}",
              file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        path = render_report(sweep, a.out, use_wandb=a.wandb)
    except FileNotFoundError as e:
        print(f"python -m clq.analysis: {e}", file=sys.stderr)
        return 2
    print(f"report: {path}\ntable:  {os.path.join(sweep, 'sweep.csv')}")
    if a.notebook:
        print(f"notebook: {execute_notebook(sweep, os.path.join(sweep, 'tradeoffs.ipynb'))}")
    print(f"({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
