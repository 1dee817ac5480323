"""The wandb host: a child process that owns a run's wandb runs, so that wandb never runs in the process that
computes.

Importing wandb and matplotlib and ``wandb.init`` cost ~1-1.5 s of CPU. In a thread of the computing process
they held its interpreter lock while event 0 ran, and made event 0 1.2-1.8 s longer on 2 cores even at the
lowest thread priority (docs/performance.md, "What is left", the bullet on opening wandb). In a process of their
own, started before the run imports JAX and builds its stream, at the lowest CPU priority, they take what the run
leaves idle; nothing in the run waits for them before the run ends.

The parent (`Host`, one per process, shared by every tracker of the process: a vectorized sweep tracks all its
members in one host) writes one JSON message per line to the child's stdin; the child answers on its stdout:

    parent -> child                                                 child -> parent
    {"op": "open", "key", "run_dir", "config", "project",           {"key", "error": "<what failed>"}  (once)
     "mode", "group", "name"}                                        {"key", "finished": true}
    {"op": "log", "key", "metrics", "step"}
    {"op": "summary", "key", "values"}
    {"op": "results", "key", "results", "run_dir"}
    {"op": "finish", "key", "ok"}

A run's first error is answered once and its later messages are dropped; the parent raises it at its next call
(`Host.check`) or at ``finish``. When the parent ends without finishing a run (a crash, a kill), the child reads the
end of its stdin and finishes that run as failed (exit code 1): what was logged is kept.
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import queue
import subprocess
import sys
import threading

__all__ = ["Host", "host", "prestart", "NICE"]

#: The child's niceness: it runs when the computing process leaves a core idle.
NICE = 19
#: Seconds `Host.finish` waits for the child to finish a run (wandb's own finish writes and closes its files).
FINISH_TIMEOUT_S = 300.0


class Host:
    """The parent's side: a started child process, its replies, and the runs opened in it."""

    def __init__(self):
        env = {**os.environ}
        env.setdefault("WANDB_SILENT", "true")
        # The child imports the clq this process runs: a checkout on the parent's path (a bench of another
        # commit, say) goes first on the child's. An installed clq is found as installed: its folder
        # (site-packages) first on the path could shadow the standard library.
        here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        if os.path.basename(here) not in ("site-packages", "dist-packages"):
            env["PYTHONPATH"] = os.pathsep.join([here, *filter(None, [env.get("PYTHONPATH")])])
        self._proc = subprocess.Popen([sys.executable, "-m", "clq.tracking.wandb_host"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, env=env, text=True, bufsize=1)
        self._lock = threading.Lock()  # one writer at a time (a vectorized sweep's members log from one thread)
        self._replies = threading.Condition()
        self._errors: dict[int, str] = {}
        self._finished: set[int] = set()
        self._keys = itertools.count()
        threading.Thread(target=self._read, name="clq-wandb-host", daemon=True).start()

    def alive(self) -> bool:
        return self._proc.poll() is None

    def _read(self) -> None:
        for line in self._proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            with self._replies:
                if "error" in msg:
                    self._errors.setdefault(msg["key"], msg["error"])
                if msg.get("finished"):
                    self._finished.add(msg["key"])
                self._replies.notify_all()
        with self._replies:  # the child ended: every wait ends
            self._replies.notify_all()

    def _exit_error(self) -> str:
        return f"the wandb host process ended (exit code {self._proc.poll()})"

    def send(self, msg: dict) -> None:
        """Write one message; raises RuntimeError when the child has ended."""
        line = json.dumps(msg, default=_plain) + "\n"
        with self._lock:
            try:
                self._proc.stdin.write(line)
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                raise RuntimeError(self._exit_error()) from None

    def open(self, run_dir: str, config: dict, project: str, mode: str, group: str | None,
             name: str | None) -> int:
        """Open a wandb run in the child (it opens when the child gets there); returns its key."""
        key = next(self._keys)
        self.send({"op": "open", "key": key, "run_dir": run_dir, "config": config, "project": project, "mode": mode,
                   "group": group, "name": name})
        return key

    def error(self, key: int) -> str | None:
        """The run's error so far (the child's answer), or None."""
        with self._replies:
            return self._errors.get(key)

    def check(self, key: int) -> None:
        """Raise the run's error (RuntimeError) if the child answered one, or if it has ended."""
        err = self.error(key)
        if err is None and not self.alive():
            with self._replies:
                if key in self._finished:
                    return
            err = self._exit_error()
        if err is not None:
            raise RuntimeError(f"wandb: {err}")

    def finish(self, key: int, ok: bool, timeout: float = FINISH_TIMEOUT_S) -> str | None:
        """Finish the run (exit code 0 if `ok`, else 1) and wait until the child has; returns its error, if any."""
        try:
            self.send({"op": "finish", "key": key, "ok": ok})
        except RuntimeError as e:
            return self.error(key) or str(e)
        with self._replies:
            done = self._replies.wait_for(lambda: key in self._finished or key in self._errors or not self.alive(),
                                          timeout)
            if key in self._errors:
                return self._errors[key]
            if key in self._finished:
                return None
        return self._exit_error() if done else f"the wandb host did not finish the run within {timeout:.0f} s"

    def close(self, timeout: float = 30.0) -> None:
        """End the child: it finishes the runs still open as failed, then exits."""
        try:
            self._proc.stdin.close()
        except OSError:
            pass
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()


def _plain(x):
    """NumPy scalars and arrays as plain values (NaN and inf stay floats, as wandb logs them)."""
    if hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(f"{type(x).__name__} is not JSON serializable")


_host: list[Host] = []
_host_lock = threading.Lock()


def host() -> Host:
    """This process's host, started on first use (and again if it ended)."""
    with _host_lock:
        if not _host or not _host[0].alive():
            if not _host:
                atexit.register(_close)
            _host[:] = [Host()]
        return _host[0]


def prestart() -> None:
    """Start the host now (a no-op if it runs): its imports then overlap the work before the run opens."""
    host()


def _close() -> None:
    with _host_lock:
        for h in _host:
            h.close()


# ----------------------------------------------------------------------------------------------------------------
# The child.


def _open(msg: dict):
    """``wandb.init`` of a run with the experiment's config (and the paper's names), its event axis defined."""
    import wandb

    from clq.analysis.collect import paper_names

    config = msg["config"]  # plain JSON values already (`Host.send`)
    run = wandb.init(project=msg["project"], mode=msg["mode"], dir=msg["run_dir"], group=msg["group"],
                     name=msg["name"], reinit="create_new",  # runs may be open side by side
                     config={**config, **paper_names(config)})
    run.define_metric("event")  # the learning event is the x-axis of every curve
    run.define_metric("*", step_metric="event")
    return run


def _log_results(run, results: dict, run_dir: str) -> None:
    """The end of a run in wandb: accuracy matrices (tables + heatmap), the buffer's class histogram, the
    results.json (+ export) artifact."""
    import wandb

    from clq.analysis.plots import accuracy_heatmap

    m = results["accuracy_matrix"]
    sessions = list(results["final_accuracy_per_session"])
    classes = len(m["per_class"][0]) if m["per_class"] else 0
    run.log({"accuracy_matrix/per_class": wandb.Table(
                 columns=["event"] + [f"class {k}" for k in range(classes)],
                 data=[[i, *row] for i, row in enumerate(m["per_class"])]),
             "accuracy_matrix/per_session": wandb.Table(
                 columns=["event"] + sessions, data=[[i, *row] for i, row in enumerate(m["per_session"])]),
             "accuracy_matrix/heatmap": wandb.Image(accuracy_heatmap(m["per_class"], m["per_session"], sessions))})
    hist = results["buffer"]["class_histogram"]
    table = wandb.Table(columns=["class", "latents"], data=[[str(k), int(n)] for k, n in enumerate(hist)])
    run.log({"buffer/class_histogram": wandb.plot.bar(table, "class", "latents",
                                                      title="replay buffer: latents per class at the end")})
    art = wandb.Artifact(f"results-{run.id}", type="results",
                         description="results.json of the run (and its exported frozen stage, if any)")
    art.add_file(os.path.join(run_dir, "results.json"))
    for key in ("npz", "json", "c_header"):
        path = (results.get("export") or {}).get(key)
        if path and os.path.exists(path):
            art.add_file(path, name=f"export/{os.path.basename(path)}")
    run.log_artifact(art)


def _handle(runs: dict, msg: dict) -> bool:
    """Carry out one message; True when it finished its run."""
    op, key = msg["op"], msg["key"]
    if op == "open":
        runs[key] = _open(msg)
        return False
    run = runs[key]
    if op == "log":
        run.log(msg["metrics"], step=msg["step"])
    elif op == "summary":
        for k, v in msg["values"].items():
            run.summary[k] = v
    elif op == "results":
        _log_results(run, msg["results"], msg["run_dir"])
    elif op == "finish":
        del runs[key]
        run.finish(exit_code=0 if msg["ok"] else 1)
        return True
    else:
        raise ValueError(f"unknown message {op!r}")
    return False


def _serve(inbox: queue.Queue, reply, broken: str | None = None) -> None:
    """Carry out the messages until the parent's end; `broken`: why wandb cannot be had here (every run fails)."""
    runs: dict = {}
    failed: set = set()
    while (msg := inbox.get()) is not None:
        key = msg.get("key")
        if broken is not None and key not in failed:
            failed.add(key)
            reply({"key": key, "error": broken})
        if key in failed:
            if msg.get("op") == "finish":
                reply({"key": key, "finished": True})
            continue
        try:
            if _handle(runs, msg):
                reply({"key": key, "finished": True})
        except Exception as e:  # the run's error goes to the parent, which reports it; other runs go on
            failed.add(key)
            run = runs.pop(key, None)
            reply({"key": key, "error": f"{type(e).__name__}: {e}"})
            if run is not None:
                try:
                    run.finish(exit_code=1)
                except Exception:
                    pass
    for run in runs.values():  # the parent ended without finishing them: keep what they logged, as failed
        run.finish(exit_code=1)


def _child() -> None:
    import signal

    # Ctrl-C reaches the whole process group: the parent handles it and finishes its runs (or ends, and the runs
    # still open are finished as failed here).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(os, "nice"):
        try:
            os.nice(NICE)
        except OSError:
            pass
    # The replies go to the original stdout; anything a library prints goes to stderr instead.
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    write_lock = threading.Lock()

    def reply(msg: dict) -> None:
        with write_lock:
            out.write(json.dumps(msg) + "\n")

    # A thread drains stdin as messages come, so that the parent never waits on a full pipe while this process
    # (at the lowest priority) imports wandb or waits for a core.
    inbox: queue.Queue = queue.Queue()

    def read() -> None:
        for line in sys.stdin:
            inbox.put(json.loads(line))
        inbox.put(None)

    threading.Thread(target=read, daemon=True).start()
    # The heavy imports, before the first message needs them.
    broken = None
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot  # noqa: F401
        import wandb  # noqa: F401

        import clq.analysis.collect  # noqa: F401
        import clq.analysis.plots  # noqa: F401
    except Exception as e:  # e.g. wandb not installed: every run's open answers this
        broken = f"{type(e).__name__}: {e}"
    _serve(inbox, reply, broken)


if __name__ == "__main__":
    _child()
