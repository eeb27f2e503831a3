"""A SIGTERM (or Ctrl-C) ends a command-line run within seconds: one line on stderr, no stray processes.

Prefect replaces the SIGTERM handler while a flow runs: it marks the run Crashed through its API and
only then re-sends the signal to the handler it replaced. When the whole process group is signalled
(a scheduler, `kill -- -PGID`) its temporary API server dies first, and the crash report was retried
against the dead server for minutes, followed by "Error logging to API" tracebacks. So the handler
here has two parts (and, once a SIGTERM came, logging errors are dropped: ``logging.raiseExceptions``):

- a watcher thread that learns of a SIGTERM at once through ``signal.set_wakeup_fd`` (whichever
  Python handler is installed, Prefect's included), prints the line and, if the process is still
  alive after ``grace_s`` seconds, ends its child processes and exits with status 143;
- the Python handler Prefect re-sends the signal to (or the one in force outside a flow run): it
  raises ``SystemExit(143)``, so ``finally`` blocks run and temporary files are removed.

Ctrl-C in a terminal signals the whole group the same way (SIGINT): Python's own handler stays (a
``KeyboardInterrupt``), and the watcher bounds it with the same grace period (exit status 130).

A main thread that waits on worker threads (a case being written, an nnU-Net step) only sees the
signal when they finish, and Prefect cannot report the crash before then; so the watcher, before it
exits, marks the flow runs this process began (and their unfinished task runs) Crashed itself, through
the REST API with a short timeout, where a server still answers.

Nothing is ever half-written in place: components write under temporary names and rename into place
(``components.io``), so a stopped run leaves complete files plus hidden temporaries, which the next
run of the same command sweeps away before it resumes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import urllib.request

GRACE_S = 5.0
EXIT_STATUS = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM (130 for SIGINT)
_NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C (SIGINT)"}
_OUTCOME = ("files already in place are complete (unfinished ones are never renamed into place) and the same "
            "command resumes")
MESSAGE = f"gliosynth: stopped by SIGTERM; {_OUTCOME}"
_outcome = _OUTCOME

_lock = threading.Lock()
_announced = False
_raised = False  # the SIGTERM handler raised SystemExit once already
_installed_pid: int | None = None
_wakeup_fd: int | None = None
_sockets: tuple[socket.socket, socket.socket] | None = None  # kept open for the life of the process
_flow_run_ids: dict[str, None] = {}  # flow runs this process began, in order


def _announce(signum: int = signal.SIGTERM) -> None:
    global _announced
    with _lock:
        if _announced:
            return
        _announced = True
    # From here on a log line that cannot reach Prefect's API (its temporary server is often the first
    # to die) is dropped quietly: the stdlib's switch, which Prefect's log worker honours too.
    logging.raiseExceptions = False
    with contextlib.suppress(Exception):
        print(f"gliosynth: stopped by {_NAMES[signum]}; {_outcome}", file=sys.stderr, flush=True)


def say_on_sigterm(outcome: str) -> None:
    """What the line a SIGTERM prints says after "stopped by SIGTERM; ", for commands such as ``serve``."""
    global _outcome
    _outcome = outcome


def _end_children(timeout: float = 1.0) -> None:
    """Terminate this process's descendants (temporary Prefect server, worker pools, nnU-Net steps)."""
    try:
        import psutil

        children = psutil.Process().children(recursive=True)
        for child in children:
            with contextlib.suppress(psutil.Error):
                child.terminate()
        _, alive = psutil.wait_procs(children, timeout=timeout)
        for child in alive:
            with contextlib.suppress(psutil.Error):
                child.kill()
    except Exception:  # never let cleanup stand between a SIGTERM and the exit
        pass


class _FlowRunIds(logging.Filter):
    """Notes the id of every flow run whose logger writes a line in this process (Prefect's own lines included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        run_id = getattr(record, "flow_run_id", None)
        if run_id:
            _flow_run_ids[str(run_id)] = None
        return True


def _api_urls() -> list[str]:
    """The Prefect APIs this process may be reporting to: the configured one, or its temporary server."""
    urls = [os.environ["PREFECT_API_URL"]] if os.environ.get("PREFECT_API_URL") else []
    server = sys.modules.get("prefect.server.api.server")
    for instance in list(getattr(getattr(server, "SubprocessASGIServer", None), "_instances", {}).values()):
        proc = getattr(instance, "server_process", None)
        if proc is not None and proc.poll() is None:
            urls.append(instance.api_url)
    return urls


def _post(url: str, body: dict, timeout: float) -> object:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"null")


def _mark_crashed(signum: int, budget_s: float = 2.0) -> None:
    """Best effort, within ``budget_s``: the runs Prefect had no time to report end Crashed, not Running forever."""
    t_end = time.monotonic() + budget_s
    crashed = {"type": "CRASHED", "name": "Crashed", "message": f"stopped by {_NAMES[signum]}"}
    for api in _api_urls():
        try:
            for run_id in list(_flow_run_ids):
                left = t_end - time.monotonic()
                if left <= 0:
                    return
                tasks = _post(f"{api}/task_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}, "task_runs": {
                    "state": {"type": {"any_": ["RUNNING", "PENDING"]}}}}, timeout=left)
                for t in tasks if isinstance(tasks, list) else []:
                    _post(f"{api}/task_runs/{t['id']}/set_state", {"state": crashed}, timeout=max(0.1, t_end - time.monotonic()))
                # an orchestration rule keeps a run that already reached a final state as it is
                _post(f"{api}/flow_runs/{run_id}/set_state", {"state": crashed}, timeout=max(0.1, t_end - time.monotonic()))
            return
        except Exception:  # a server that is gone or slow: the next one, or give up
            continue


def _exit_now(signum: int) -> None:
    _announce(signum)
    _mark_crashed(signum)
    _end_children()
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    os._exit(128 + signum)


def _watch(reader: socket.socket, grace_s: float) -> None:
    """Wait for the first SIGTERM or SIGINT; then give the main thread ``grace_s`` seconds to exit."""
    got = None
    while got is None:
        try:
            data = reader.recv(64)
        except OSError:
            return
        if not data:
            return
        got = next((sig for sig in data if sig in _NAMES), None)
    _announce(got)
    # Later signals change nothing: Prefect re-sends the SIGTERM it caught to itself once it has
    # recorded the crash, and that one must not cut the main thread's clean exit short.
    deadline = time.monotonic() + grace_s
    while (left := deadline - time.monotonic()) > 0:
        reader.settimeout(left)
        try:
            if not reader.recv(64):
                break
        except TimeoutError:
            break
        except OSError:
            break
    _exit_now(got)  # still alive after the grace period: the main thread is stuck (a crash report, a worker)


def _on_sigterm(signum: int, frame: object) -> None:
    global _raised
    if os.getpid() != _installed_pid:  # a forked child that kept the parent's handler: default action
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    _announce()
    if _raised:
        # A second SIGTERM (make re-sends the one its group got to its children) must not cut short the
        # ``finally`` blocks the first one started; the watcher still ends the process after the grace period.
        return
    _raised = True
    raise SystemExit(EXIT_STATUS)


def _reset_in_forked_child() -> None:
    """A forked worker (process pools) gets the default SIGTERM action back and no shared wakeup socket."""
    with contextlib.suppress(ValueError, OSError):
        if _wakeup_fd is not None:
            previous = signal.set_wakeup_fd(-1)
            if previous not in (-1, _wakeup_fd):
                signal.set_wakeup_fd(previous)
    with contextlib.suppress(ValueError, OSError):
        if signal.getsignal(signal.SIGTERM) is _on_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def exit_promptly_on_sigterm(grace_s: float = GRACE_S) -> None:
    """Make a SIGTERM end this process within ``grace_s`` seconds (plus about one to end its children).

    Call once from the main thread, before any flow starts; later calls and calls from other threads
    do nothing.
    """
    global _installed_pid, _wakeup_fd, _sockets
    if _installed_pid is not None or threading.current_thread() is not threading.main_thread():
        return
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    _installed_pid, _wakeup_fd, _sockets = os.getpid(), writer.fileno(), (reader, writer)
    os.register_at_fork(after_in_child=_reset_in_forked_child)
    logging.getLogger("prefect.flow_runs").addFilter(_FlowRunIds())
    threading.Thread(target=_watch, args=(reader, grace_s), name="gliosynth-sigterm", daemon=True).start()
