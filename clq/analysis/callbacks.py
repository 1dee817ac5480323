"""Hydra callback for sweeps: record members that raised, and summarize the sweep when it ends.

Every ``sweeps/*.yaml`` enables it::

    hydra:
      callbacks:
        sweep_summary:
          _target_: clq.analysis.callbacks.SweepSummary

* on_multirun_start: points ``<parent of the sweep dir>/latest`` at the sweep (``multirun/offline_grid/latest``).
* on_job_end (runs in the member's process, whichever launcher): if Hydra caught an exception from the member,
  writes it with its traceback to ``<run dir>/job_failure.json`` so the collector can list the member with its
  error even when it died before writing results.json.
* on_multirun_end: collects the sweep (`clq.analysis.collect_runs`), writes ``<sweep dir>/sweep.csv`` (the
  wandb-free sink: one row per member, failures included), adds the sweep's summary run to the members' wandb
  group when they log to wandb (`clq.analysis.wandb_summary`: Pareto plots, the sweep table), logs how many members completed and each failure's
  error, and exits with status 1 if any member did not complete (after every member ran).

Hydra calls on_multirun_end only when the sweeper returns normally: a member that raises makes Hydra's sweeper
re-raise its exception at the end of the sweep (after all members ran), in which case sweep.csv is not written
and ``python -m clq.analysis <sweep dir>`` produces it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from typing import Any

from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from clq.analysis.collect import FAILURE_FILE, collect_runs, write_csv
from clq.atomic import atomic_file

__all__ = ["SweepSummary"]

log = logging.getLogger(__name__)


def _link_latest(sweep_dir: str) -> None:
    parent, name = os.path.split(os.path.normpath(sweep_dir))
    link = os.path.join(parent, "latest")
    if os.path.exists(link) and not os.path.islink(link):
        return  # a real folder called "latest": leave it alone
    tmp = os.path.join(parent, f".latest-{os.getpid()}")
    try:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(name, tmp)  # relative, so the tree can be moved
        os.replace(tmp, link)  # atomic: concurrent sweeps of the same name leave one valid link
    except OSError as e:
        log.warning(f"could not point {link} at {name}: {e}")


class SweepSummary(Callback):
    """See the module docstring.

    Args:
      csv: file name of the per-member table written in the sweep dir.
      fail_on_member_error: exit with status 1 at the end of a sweep in which a member failed.
      latest_link: maintain the ``latest`` symlink next to the sweep dir.
    """

    def __init__(self, csv: str = "sweep.csv", fail_on_member_error: bool = True, latest_link: bool = True):
        self.csv = csv
        self.fail_on_member_error = fail_on_member_error
        self.latest_link = latest_link

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = str(config.hydra.sweep.dir)
        os.makedirs(sweep_dir, exist_ok=True)
        if self.latest_link:
            _link_latest(sweep_dir)

    def on_job_end(self, config: DictConfig, job_return, **kwargs: Any) -> None:
        if job_return.status != JobStatus.FAILED:
            return
        exc = job_return._return_value  # the exception Hydra caught (JobReturn.return_value would re-raise it)
        run_dir = str(config.hydra.runtime.output_dir)
        record = {
            "status": "failed",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
            "overrides": list(job_return.overrides or []),
        }
        path = os.path.join(run_dir, FAILURE_FILE)
        with atomic_file(path, "w") as f:
            json.dump(record, f, indent=1)

    def _wandb_summary(self, config: DictConfig, sweep_dir: str, df, csv_path: str) -> None:
        """The sweep's summary run in its members' wandb group (`clq.analysis.wandb_summary`), when they use wandb."""
        from omegaconf import OmegaConf

        if OmegaConf.select(config, "tracking.backend", default=None) != "wandb":
            return
        try:
            from clq.analysis.wandb_summary import log_sweep_summary

            from clq.config import sweep_group

            group = sweep_group(OmegaConf.select(config, "tracking.group", default=None), sweep_dir)
            where = log_sweep_summary(sweep_dir, df, csv_path, str(group),
                                      OmegaConf.select(config, "tracking.project", default="clq"),
                                      OmegaConf.select(config, "tracking.mode", default="offline"))
            if where:
                log.info(f"sweep summary run (wandb group {group}): {where}")
        except Exception as e:  # the summary run is a view: it never costs the sweep its results
            log.warning(f"could not write the sweep's wandb summary run: {type(e).__name__}: {e}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = str(config.hydra.sweep.dir)
        df = collect_runs(sweep_dir)
        path = write_csv(df, os.path.join(sweep_dir, self.csv))
        bad = df[df["status"] != "completed"]
        log.info(f"sweep {sweep_dir}: {len(df)} members, {len(df) - len(bad)} completed, {len(bad)} not; "
                 f"table: {path}; report: python -m clq.analysis {sweep_dir}")
        self._wandb_summary(config, sweep_dir, df, path)
        for _, r in bad.iterrows():
            log.error(f"  member {r['job']} ({r['overrides']}): {r['status']}: {r['error']}")
        if len(bad) and self.fail_on_member_error:
            # SystemExit, not an exception: Hydra turns callback exceptions into warnings.
            sys.exit(1)
