"""`VectorizedLauncher`: runs a multirun's members in this process, grouped into compiled programs.

Hydra finds it as a plugin (it lives in the ``hydra_plugins`` namespace package); ``conf/hydra/launcher/
clq_vectorized.yaml`` selects it. It loads every job's config, hands them to `clq.launcher` (plan, share event 0
and latents, run each group as one program, write every member as clq-run does), then runs Hydra's own job
bookkeeping (``run_job``: the job's ``.hydra/`` folder, logging, callbacks) for each member in job order.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, configure_log, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict


class VectorizedLauncher(Launcher):
    """Args (``hydra.launcher.*``):
      events_per_chunk: learning events per compiled call (progress, non-finite checks and checkpoints
        happen between calls).
      members_per_batch: members of a group vmapped together (null: all; fewer bound memory).
      plan_only: print how the members would run (groups, event-0 trainings, frozen stages; also written to
        ``<sweep dir>/plan.json``, which a launch that runs updates with how each group ran) and exit without
        running any.
    """

    def __init__(self, events_per_chunk: int = 8, members_per_batch: Optional[int] = None,
                 plan_only: bool = False) -> None:
        super().__init__()
        for name, v, allow_none in (("events_per_chunk", events_per_chunk, False),
                                    ("members_per_batch", members_per_batch, True)):
            if (v is None and not allow_none) or (v is not None and (isinstance(v, bool) or not isinstance(v, int)
                                                                     or v < 1)):
                raise ValueError(f"hydra.launcher.{name} must be an integer >= 1{' or null' if allow_none else ''}, "
                                 f"got {v!r}")
        if not isinstance(plan_only, bool):
            raise ValueError(f"hydra.launcher.plan_only must be true or false, got {plan_only!r}")
        self.plan_only = plan_only
        self.events_per_chunk = events_per_chunk
        self.members_per_batch = members_per_batch
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from clq.launcher import Member, plan_members, run_planned

        setup_globals()
        # As clq-run: JAX logs its accelerator probing at INFO through Hydra's root logger; noise on a CPU machine.
        logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = str(self.config.hydra.sweep.dir)
        Path(sweep_dir).mkdir(parents=True, exist_ok=True)

        def set_hydra(cfg: DictConfig) -> None:
            HydraConfig.instance().set_config(cfg)

        members = []
        for n, overrides in enumerate(job_overrides):
            idx = initial_job_idx + n
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(cfg):
                cfg.hydra.job.id = idx
                cfg.hydra.job.num = idx
            set_hydra(cfg)
            run_dir = os.path.abspath(os.path.join(str(cfg.hydra.sweep.dir), str(cfg.hydra.sweep.subdir)))
            members.append(Member(idx, list(overrides), cfg, run_dir))

        def job(member, task) -> JobReturn:
            set_hydra(member.config)
            ret = run_job(hydra_context=self.hydra_context, task_function=task, config=member.config,
                          job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
            return ret

        groups = plan_members(members, set_hydra)
        returns = run_planned(members, groups, sweep_dir, set_hydra, job, self.task_function, self.events_per_chunk,
                              self.members_per_batch, self.plan_only)
        if returns is None:  # plan only: no member ran, so there is nothing for the sweep's callbacks to collect
            sys.exit(0)
        return returns
