"""The vectorizing launcher's work: a multirun's members grouped, each group run as one compiled program.

``clq-run -m hydra/launcher=clq_vectorized replay.bits=8,7,6 replay.size=375,1500 seed=0,1 latent_layer=19,23``
(the Hydra plugin is ``hydra_plugins/clq_vectorized_launcher``; it only hands the members' configs here).

1. **Plan** (before any compute): every member's config is resolved and validated as ``clq-run`` does, and its
   cost report made (``target.enforce_memory`` refusals too). Members that differ only in ``replay.bits`` and
   ``train.lr`` (traced values), and in what is only watched (tracking, progress, ...), form a *group*; FP32 replays (``replay.bits=null``) form
   their own; so do members whose ``hydra.job.env_set`` differs (it is set while their group computes). Members a
   group cannot run (a config error, ``joint_upper_bound``, no replay buffer, events of different mini-batch
   splits) run one by one through ``clq-run``'s own task, as under the basic launcher. ``<sweep dir>/plan.json``
   holds the plan; as each group runs, its entry gets ``ran``: ``group``, or ``alone`` (it fell back to
   ``clq-run``'s task at run time) with ``why``; a group whose run failed every member also has ``error``.
2. **Share**: members with the same data, model, seed and event-0 settings share one event 0
   (`clq.train.event0`: in memory here, and on disk under ``event0_cache_dir`` or, when that is null, under
   ``<sweep dir>/.cache/event0``); groups with the same frozen stage (latent layer, quantization) share its
   latents (`clq.train.vectorized.prepare_sweep` runs once for them).
3. **Run** each group (`clq.train.group.run_group`) with its members' ``hydra.job.env_set`` in the environment
   (restored afterwards, as Hydra's ``run_job`` does for a job), chunk by chunk, with progress, non-finite checks and
   atomic checkpoints in ``<sweep dir>/.groups/<group>/``; resumed after a crash when the same sweep dir is run
   again (``hydra.sweep.dir=...``, ``resume=true``).
4. **Write** every member as ``clq-run`` would: results.json (same schema, built by the same functions),
   events.jsonl as the chunks complete, its wandb run, its export with ``export=true``; the launcher then runs
   Hydra's job bookkeeping for it (``.hydra/``, callbacks such as `clq.analysis.callbacks.SweepSummary`) and
   returns what ``clq-run`` returns (final accuracy, or None for a failed member).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from hydra.core.utils import env_override  # what Hydra's run_job sets a job's hydra.job.env_set with
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from clq.config import ConfigError, ExperimentConfig, experiment_config, sweep_group
from clq.run import (WATCHED_KEYS, completed_results, enable_compile_cache, failed_results, initial_params,
                     load_stream, log_summary, memory_report, run_fingerprint, summary_table)
from clq.tracking import make_tracker, write_json_atomic

__all__ = ["Member", "Group", "plan_members", "plan_summary", "run_planned", "group_key"]


@dataclass
class Member:
    """One job of the multirun: its Hydra config, where it writes, and (when valid) its experiment."""

    idx: int
    overrides: list
    config: DictConfig  # the job's config, with its hydra node (job num set)
    run_dir: str
    resolved: dict | None = None
    exp: ExperimentConfig | None = None
    memory: dict | None = None
    solo_reason: str | None = None  # why it runs alone through clq-run's task (None: in a group)
    outcome: dict = field(default_factory=dict)  # filled when its group has run: code, message, results
    env_set: dict = field(default_factory=dict)  # its hydra.job.env_set, resolved: set while its group computes


@dataclass
class Group:
    members: list
    key: str
    ran: str | None = None  # once run: "group" (one program) or "alone" (fell back to clq-run's task, member by member)
    why: str | None = None  # why it fell back (with ran="alone")
    error: str | None = None  # the error that failed every member of a group that ran (with ran="group")

    @property
    def exp(self) -> ExperimentConfig:
        return self.members[0].exp

    def describe(self) -> str:
        e = self.exp
        lrs = {m.exp.train.lr for m in self.members}
        bits = [("FP32" if m.exp.replay.bits is None else f"U{m.exp.replay.bits}")
                + (f"@lr={m.exp.train.lr}" if len(lrs) > 1 else "") for m in self.members]
        env = self.members[0].env_set
        return (f"l={e.latent_layer} quant={'fp32' if e.quant is None else e.quant.bits} replays {','.join(bits)} "
                f"N={e.replay.size} seed={e.seed}" + (f" env_set {','.join(f'{k}={v}' for k, v in sorted(env.items()))}"
                                                      if env else ""))


def group_key(resolved: dict, fp32_replays: bool, env_set: dict | None = None) -> str:
    """What a group's members share: the resolved config without the watched keys and without what the group's
    program traces (replay.bits, train.lr), but with whether the replays are FP32 (another program; from the
    validated config, where ``fp32`` and ``null`` both mean FP32), and the job's ``hydra.job.env_set`` (`env_set`;
    set while the group computes, so it must be the same for every member)."""
    # resume and checkpoint_every say how the group itself runs: members that differ in them are other groups.
    cfg = {k: v for k, v in resolved.items() if k not in WATCHED_KEYS or k in ("resume", "checkpoint_every")}
    replay = dict(cfg.get("replay", {}))
    replay.pop("bits", None)
    fp32 = bool(fp32_replays)
    train = {k: v for k, v in cfg.get("train", {}).items() if k != "lr"}
    # Only a non-empty env_set enters the key: the keys (and checkpoint folders) of other sweeps stay what they were.
    env = {"hydra.job.env_set": dict(env_set)} if env_set else {}
    return hashlib.sha256(json.dumps({**cfg, "replay": replay, "train": train, "fp32_replays": fp32, **env},
                                     sort_keys=True, default=str).encode()).hexdigest()[:16]


def _env_set(config: DictConfig) -> dict:
    """A job config's ``hydra.job.env_set``, resolved as Hydra's ``run_job`` resolves it: within the hydra node
    (``${hydra.job.num}``, not the task's keys). ``{}`` when it has none."""
    node = OmegaConf.select(OmegaConf.masked_copy(config, "hydra"), "hydra.job.env_set", default=None)
    env = {} if node is None else OmegaConf.to_container(node, resolve=True)
    bad = [k for k, v in env.items() if v is None]
    if bad:
        raise ConfigError(f"hydra.job.env_set.{bad[0]} is null; an environment variable needs a string")
    return {str(k): str(v) for k, v in env.items()}


def _event0_key(m: Member) -> str:
    """What event 0 of a valid member depends on, at the config level (`clq.train.event0` keys the content
    itself): data, model, seed and `event0_settings`."""
    from clq.train.event0 import event0_settings

    return json.dumps({k: m.resolved.get(k) for k in ("data", "model", "seed")}
                      | {"settings": event0_settings(m.exp.train, m.exp.latent_layer)}, sort_keys=True, default=str)


def plan_summary(members: list[Member], groups: list[Group]) -> dict:
    """How the launch will run: groups, members alone (and why), event-0 trainings and frozen stages needed,
    against one of each per member under any other launcher."""
    grouped = [m for g in groups for m in g.members]
    return {
        "members": len(members),
        "groups": [{"members": [m.idx for m in g.members], "what": g.describe()} for g in groups],
        "alone": {m.idx: m.solo_reason for m in members if m.solo_reason is not None},
        "event0_trainings": len({_event0_key(m) for m in grouped}),
        "frozen_stages": len({_prepared_key(m.resolved) for m in grouped}),
        "compiled_group_programs": len(groups),
    }


def _ran(g: Group) -> dict:
    """How a group ran, once it has (plan.json's ``ran``, and ``why`` or ``error`` when set): nothing before."""
    if g.ran is None:
        return {}
    return {"ran": g.ran} | {k: v for k, v in (("why", g.why), ("error", g.error)) if v is not None}


def _prepared_key(resolved: dict) -> str:
    """What `prepare_sweep` depends on: data, model, seed, training (not the learning events' rate), quantization,
    latent layer."""
    train = {k: v for k, v in resolved.get("train", {}).items() if k != "lr"}
    return json.dumps({k: resolved.get(k) for k in ("data", "model", "seed", "quant", "latent_layer")}
                      | {"train": train}, sort_keys=True, default=str)


def plan_members(members: list[Member], set_hydra: Callable[[DictConfig], None]) -> list[Group]:
    """Resolve and validate every member; group those that can share a program. Nothing is computed.

    Args:
      set_hydra: makes a member's config the current Hydra config (``${hydra:...}`` interpolations).
    """
    from clq.train.vectorized import shared_composition  # noqa: F401 (imported here: JAX loads lazily)

    groups: dict[str, Group] = {}
    for m in members:
        set_hydra(m.config)
        try:
            m.env_set = _env_set(m.config)
            with env_override(m.env_set):  # as clq-run's task resolves its config: inside the job's env_set
                cfg = OmegaConf.masked_copy(m.config, [k for k in m.config if k != "hydra"])
                m.resolved = OmegaConf.to_container(cfg, resolve=True)
                exp = experiment_config(m.resolved)
                # As clq-run's task: an ad-hoc multirun is grouped by its sweep folder (`sweep_group`).
                exp = replace(exp, tracking=replace(exp.tracking,
                                                    group=sweep_group(exp.tracking.group, m.config.hydra.sweep.dir)))
                m.exp = exp
                m.memory = memory_report(exp, exp.model.specs())
        except (OmegaConfBaseException, ConfigError) as e:
            m.solo_reason = f"config error: {e}"
            continue
        except Exception as e:  # anything else: clq-run's own task reports it for this member
            m.solo_reason = f"{type(e).__name__}: {e}"
            continue
        if exp.joint_upper_bound:
            m.solo_reason = "joint_upper_bound=true (the joint bound is a run of its own)"
        elif exp.replay.size < 1:
            m.solo_reason = "replay.size=0 (no buffer to vectorize over)"
        if m.solo_reason is None:
            key = group_key(m.resolved, exp.replay.bits is None, m.env_set)
            groups.setdefault(key, Group([], key)).members.append(m)
    # Groups that share event 0 and the frozen stage run one after another, so each is computed once.
    return sorted(groups.values(), key=lambda g: (_stream_key(g.members[0]), _event0_key(g.members[0]),
                                                  _prepared_key(g.members[0].resolved), g.members[0].idx))


class _Sinks:
    """events.jsonl and wandb of one member, as `clq.run.run_experiment` opens them."""

    def __init__(self, m: Member):
        e = m.exp
        self.tracker = make_tracker(m.run_dir, e.tracking.backend, m.resolved, e.tracking.project, e.tracking.mode,
                                    e.tracking.group)
        self.events: list[dict] = []

    def log_event(self, i: int, row: dict, detail: dict | None = None) -> None:
        self.events.append(row)
        self.tracker.log_event(i, row, detail)


def _run_group(g: Group, sweep_dir: str, shared: "_Shared", gi: int, n_groups: int, say: Callable[[str], None],
               options: dict) -> None:
    """Run one group and write its members' outputs; every member's `outcome` is set (also on a crash), or, when
    the group cannot run them after all, every member's `solo_reason`. Sets ``g.ran`` (and ``g.why``, ``g.error``)."""
    from tqdm.auto import tqdm

    from clq.quant.export import EXPORT_DIR, write_export
    from clq.train.checkpoint import CheckpointError
    from clq.train.group import run_group
    from clq.train.loop import NonFiniteError
    from clq.train.vectorized import prepare_sweep, shared_composition

    t0 = time.perf_counter()
    e = g.exp
    specs = e.model.specs()
    say(f"group {gi + 1}/{n_groups}: {len(g.members)} member(s) [{', '.join(str(m.idx) for m in g.members)}]: "
        f"{g.describe()}")
    sinks: dict[int, _Sinks] = {}
    bases = {m.idx: {"config": m.resolved, "run_dir": m.run_dir} for m in g.members}
    try:
        skey = ("stream", _stream_key(g.members[0]))
        stream = shared.get(skey)
        if stream is None:
            shared.clear_streams()
            stream = shared[skey] = load_stream(e)
        if tuple(specs[0].in_shape) != tuple(stream.train_images.shape[1:]):
            raise ConfigError(f"model input {specs[0].in_shape} does not match the stream's images "
                              f"{stream.train_images.shape[1:]} (model.input_size vs data)")
        try:
            shared_composition([len(x) for x in stream.experiences[1:]], e.replay.size, e.train.batch_size)
        except ValueError as err:
            for m in g.members:
                m.solo_reason = f"events of different mini-batch splits ({err})"
            g.ran, g.why = "alone", "events of different mini-batch splits"
            say(f"group {gi + 1}: runs member by member: {g.members[0].solo_reason}")
            return
        for m in g.members:
            bases[m.idx]["stream"] = stream.summary()
            sinks[m.idx] = _Sinks(m)
        pkey = _prepared_key(g.members[0].resolved)
        prepared = shared.get(("prepared", pkey))
        event0_shared = prepared is not None
        if prepared is None:
            shared.clear_prepared()
            eval_chunk = min(e.train.eval_batch_size, len(stream.test_labels))
            prepared = prepare_sweep(stream, specs, e.latent_layer, e.train, e.quant, e.seed, eval_chunk,
                                     initial_params=initial_params(e), log=say if e.progress else None,
                                     event0_cache_dir=e.event0_cache_dir or os.path.join(sweep_dir, ".cache", "event0"),
                                     event0_memo=shared.event0)
            shared[("prepared", pkey)] = prepared
            event0_shared = prepared.event0.cached
            say(f"event 0 {'shared' if prepared.event0.cached else 'trained'}; frozen stage and latents of "
                f"l={e.latent_layer} ready ({time.perf_counter() - t0:.1f} s)")
        for m in g.members:
            if m.exp.export:
                bases[m.idx]["export"] = write_export(os.path.join(m.run_dir, EXPORT_DIR),
                                                      specs[: e.latent_layer + 1], prepared.frozen.layers, m.exp.quant)
        fingerprint = hashlib.sha256(json.dumps([run_fingerprint(m.resolved) for m in g.members]).encode()).hexdigest()
        # The members' fingerprints name the folder too: another set of members starts afresh instead of failing.
        ckpt = (os.path.join(sweep_dir, ".groups", f"{g.key}-{fingerprint[:8]}", "checkpoints") if e.checkpoint_every
                else None)
        bar = tqdm(total=stream.num_events, desc=f"group {gi + 1}/{n_groups} learning events", unit="event",
                   disable=not e.progress, dynamic_ncols=True)
        outcomes = run_group(
            stream, specs, e.latent_layer, e.train, e.replay.size, e.replay.policy,
            [m.exp.replay.bits for m in g.members], prepared,
            on_event=lambda k, i, row, detail: sinks[g.members[k].idx].log_event(i, row, detail),
            log=(lambda msg: bar.write(msg)) if e.progress else (lambda msg: None),
            progress=lambda done: bar.update(done - bar.n), checkpoint_dir=ckpt, fingerprint=fingerprint,
            resume=e.resume, eval_chunk=min(e.train.eval_batch_size, len(stream.test_labels)), seed=e.seed,
            lrs=[m.exp.train.lr for m in g.members], **options)
        bar.close()
    except Exception as err:  # every member records it; the sweep goes on with the other groups
        g.ran, g.error = "group", _short(f"{type(err).__name__}: {err}")
        code = 2 if isinstance(err, (ConfigError, FileNotFoundError, CheckpointError)) else 1
        for m in g.members:
            _fail(m, bases[m.idx], err, sinks.get(m.idx), t0, code, f"clq-run: error: {type(err).__name__}: {err}")
        if code == 1:
            import traceback

            traceback.print_exc()
        return
    g.ran = "group"
    wall = time.perf_counter() - t0
    for out in outcomes:
        if isinstance(out, dict):
            out["event0_cached"] = bool(event0_shared)
            out["quantization_check"] = prepared.quant_check[0]  # its warning is in the member's own warnings
    speeds, speed_warning = _speeds(g, specs, stream, outcomes)
    share = round(wall / len(g.members), 3)  # one program ran the group: each member is charged an equal share
    for m, out in zip(g.members, outcomes):
        s = sinks[m.idx]
        try:
            if isinstance(out, NonFiniteError):
                _fail(m, bases[m.idx], out, s, t0, 3, f"clq-run: numerical error: {out} (events so far are in "
                                                      f"{m.run_dir}/results.json)", wall_time_s=share)
                continue
            out["speed"] = speeds.get(m.idx)
            if speed_warning:
                out.setdefault("warnings", []).append(speed_warning)
            results = completed_results(bases[m.idx], out, m.memory, t0)
            results["wall_time_s"] = share
            results["group"] = {"key": g.key, "members": [x.idx for x in g.members], "wall_time_s": round(wall, 3),
                                "event0_shared": bool(event0_shared), "launcher": "clq_vectorized"}
            write_json_atomic(os.path.join(m.run_dir, "results.json"), results)
            log_summary(s.tracker, results, m.run_dir)
            s.tracker.finish(True)
            m.outcome = {"code": 0, "results": results}
        except Exception as err:  # writing one member's outputs failed: that member fails, the others go on
            import traceback

            traceback.print_exc()
            _fail(m, bases[m.idx], err, s, t0, 1, f"clq-run: error: {type(err).__name__}: {err}")


def _fail(m: Member, base: dict, err: BaseException, sink, t0: float, code: int, message: str,
          wall_time_s: float | None = None) -> None:
    """Record a member's failure as clq-run does: results.json with status failed and its events so far (when
    the member got as far as a memory report), its tracker closed as failed, its exit code and message."""
    if m.memory is not None:
        failed = failed_results(base, err, sink.events if sink is not None else [], m.memory, t0)
        if wall_time_s is not None:
            failed["wall_time_s"] = wall_time_s
        write_json_atomic(os.path.join(m.run_dir, "results.json"), failed)
    if sink is not None:
        try:
            sink.tracker.finish(False)
        except Exception:  # a tracker that cannot close must not hide the member's own error
            pass
    m.outcome = {"code": code, "message": message}


def _short(text: str, limit: int = 200) -> str:
    """The first line of `text`, at most `limit` characters (plan.json's ``error``)."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


@functools.cache
def _launch_peak() -> dict:
    """The matmul peak every member's speed account is given against, measured once per launch (process)."""
    from clq.perf import matmul_peak

    return matmul_peak()


def _speeds(g: Group, specs, stream, outcomes) -> tuple[dict, str | None]:
    """Each completed member's speed account (`clq.perf`; after a resume it counts the events run since), with
    the group's learning + evaluation rate; or ({}, a warning) when the accounts cannot be made."""
    from clq.perf import account_or_warning, flop_account, group_account

    def make():
        peak = _launch_peak()
        e = g.exp
        done = [(m, o) for m, o in zip(g.members, outcomes) if isinstance(o, dict)]
        speeds = {m.idx: flop_account(specs, e.latent_layer, stream, e.train, o, peak) for m, o in done}
        if done:
            together = group_account(list(speeds.values()), done[0][1]["timing_s"]["learning_events_s"])
            for sp in speeds.values():
                sp["group_learning_and_evaluation"] = together
        return speeds

    speeds, warning = account_or_warning(make)
    return speeds or {}, warning


def _stream_key(m: Member) -> str:
    return json.dumps({k: m.resolved.get(k) for k in ("data", "seed")} | {"size": m.resolved["model"]["input_size"]},
                      sort_keys=True, default=str)


class _Shared(dict):
    """What groups share within a launch: the newest stream, the newest prepared group data, every event 0."""

    def __init__(self):
        super().__init__()
        self.event0: dict = {}

    def _drop(self, kind: str) -> None:
        for k in [k for k in self if k[0] == kind]:
            del self[k]

    def clear_streams(self) -> None:
        self._drop("stream")

    def clear_prepared(self) -> None:
        self._drop("prepared")


def run_planned(members: list[Member], groups: list[Group], sweep_dir: str,
                set_hydra: Callable[[DictConfig], None], run_job: Callable[[Member, Callable], Any],
                solo_task: Callable, events_per_chunk: int = 8, members_per_batch: int | None = None,
                plan_only: bool = False) -> list | None:
    """Run every group, each followed by Hydra's job bookkeeping of its members (`run_job(member, task)`); then the
    members that run alone, through `solo_task` (clq-run's task function) inside `run_job`.
    events_per_chunk, members_per_batch: `clq.train.group.run_group`'s (the launcher's options).
    plan_only: print and write the plan (``<sweep dir>/plan.json``, `plan_summary`), run nothing, return None.
    Returns the job returns, in the members' order.
    """
    def say(msg: str) -> None:
        print(f"clq_vectorized: {msg}", flush=True)

    plan = plan_summary(members, groups)  # plan["groups"][i] is groups[i]'s entry
    grouped = sum(len(g.members) for g in groups)
    say(f"{len(members)} members: {grouped} in {len(groups)} compiled group(s), {len(members) - grouped} alone; "
        f"{plan['event0_trainings']} event-0 training(s) and {plan['frozen_stages']} frozen stage(s) for the "
        f"grouped members (one of each per member under another launcher)")
    plan_path = os.path.join(sweep_dir, "plan.json")
    write_json_atomic(plan_path, plan)  # rewritten as each group runs: its entry gets "ran" (and "why"/"error")
    for idx, reason in plan["alone"].items():
        say(f"member {idx} runs alone: {reason}")
    if plan_only:
        for g in plan["groups"]:
            say(f"  group of {len(g['members'])}: {g['what']}")
        say(f"plan only (hydra.launcher.plan_only=true): nothing run; {sweep_dir}/plan.json")
        return None
    valid = [m for m in members if m.exp is not None]
    try:
        if valid:
            enable_compile_cache(valid[0].exp.compile_cache_dir)
    except ConfigError as e:  # as clq-run: a config error of every member, reported by clq-run's task
        for m in valid:
            m.solo_reason = f"config error: {e}"
        for g, entry in zip(groups, plan["groups"]):
            g.ran, g.why = "alone", _short(f"config error: {e}")
            entry.update(_ran(g))
        write_json_atomic(plan_path, plan)
        groups = []
    shared = _Shared()
    returns: dict[int, Any] = {}
    for gi, g in enumerate(groups):
        for m in g.members:
            set_hydra(m.config)
            os.makedirs(m.run_dir, exist_ok=True)
        with env_override(g.members[0].env_set):  # the members' hydra.job.env_set (one per group: its key)
            _run_group(g, sweep_dir, shared, gi, len(groups), say,
                       {"events_per_chunk": events_per_chunk, "members_per_batch": members_per_batch})
        # plan.json now says how this group ran (as a group, or alone and why), however the launch ends.
        plan["groups"][gi].update(_ran(g))
        write_json_atomic(plan_path, plan)
        # Hydra's bookkeeping (.hydra/, callbacks) as soon as the group is written, not after the whole launch.
        for m in g.members:
            if m.outcome:
                returns[m.idx] = run_job(m, _report_task(m))
    shared.clear()
    shared.event0.clear()
    for m in members:  # those that run alone (or whose group could not run them), in job order
        if m.idx not in returns:
            returns[m.idx] = run_job(m, solo_task)
    return [returns[m.idx] for m in members]


def _report_task(m: Member) -> Callable[[DictConfig], float | None]:
    """The task Hydra runs for a grouped member: report what its group computed, as clq-run would."""

    def task(cfg: DictConfig) -> float | None:
        o = m.outcome
        if o["code"] != 0:
            print(o["message"], file=sys.stderr)
            return None  # a failed member of a multirun: recorded in results.json, the others ran
        print(f"\nclq-run finished: {m.run_dir}/results.json")
        print(summary_table(o["results"]))
        return o["results"]["final_accuracy"]

    return task
