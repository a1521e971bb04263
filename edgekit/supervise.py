"""Run TensorFlow's native work where a crash of it can be caught and explained.

A segfault or ``abort()`` in TensorFlow's C++ (a oneDNN kernel on some AVX-512 CPUs, a converter
bug) kills the process with no Python frame left to print anything: the user sees exit 139 and
nothing else. So the CLI runs its training and conversion commands in a child process (the same
command line again) and this light parent, which has not imported TensorFlow, waits for it: a
child killed by a signal becomes one line naming the signal and what to do, and a training
command that crashed is retried once with oneDNN off (``TF_ENABLE_ONEDNN_OPTS=0``), which avoids
the known oneDNN crashes.

For the Python API, :func:`call` runs one picklable function the same way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from edgekit.errors import EdgekitError
from edgekit.quiet import meaningful_lines

log = logging.getLogger(__name__)

# Set in the child's environment: the child runs the command itself instead of supervising.
CHILD_ENV = "EDGEKIT_SUPERVISED_CHILD"
# The file the child's native stderr is captured in, for the parent to read after a crash.
NATIVE_LOG_ENV = "EDGEKIT_NATIVE_LOG"
# Tests only: ``SIGSEGV`` makes the supervised child crash for real before it starts its work;
# ``SIGSEGV:onednn`` only while oneDNN is on (so the retry with it off succeeds).
TEST_CRASH_ENV = "EDGEKIT_TEST_NATIVE_CRASH"

ONEDNN_OFF = {"TF_ENABLE_ONEDNN_OPTS": "0"}

_DESCRIPTIONS = {"SIGSEGV": "segmentation fault", "SIGABRT": "abort, e.g. corrupted memory",
                 "SIGBUS": "bus error", "SIGILL": "illegal instruction", "SIGFPE":
                 "arithmetic error", "SIGKILL": "killed, likely by the kernel's out-of-memory "
                 "killer"}


class NativeCrash(EdgekitError):
    """A child process running TensorFlow's native code died of a signal."""

    def __init__(self, message: str, signal_name: str, log_path: Optional[str] = None):
        super().__init__(message)
        self.signal_name = signal_name
        self.log_path = log_path


@dataclass
class Outcome:
    """How a supervised child ended: its exit code, or the signal that killed it."""

    code: int
    log_path: str

    @property
    def signal_name(self) -> Optional[str]:
        if self.code >= 0:
            return None
        try:
            return signal.Signals(-self.code).name
        except ValueError:
            return f"signal {-self.code}"


def signal_name(code: int) -> Optional[str]:
    """``SIGSEGV`` for a process that ended with ``code == -11``; None for a normal exit."""
    return Outcome(code, "").signal_name


def run_child(argv: Sequence[str], env_extra: Optional[dict] = None,
              log_path: Optional[str] = None) -> Outcome:
    """Run ``argv`` with inherited stdio; its native stderr goes to ``log_path`` (made if None)."""
    if log_path is None:
        fd, log_path = tempfile.mkstemp(prefix="edgekit-native-", suffix=".log")
        os.close(fd)
    env = dict(os.environ, **{CHILD_ENV: "1", NATIVE_LOG_ENV: log_path}, **(env_extra or {}))
    # The child has a process group of its own, so a Ctrl-C (SIGINT to the terminal's foreground
    # group) or a `kill -INT` of this process reaches it exactly once: forwarded from here. A
    # second SIGINT inside its cleanup could break the promise of no half-written file.
    proc = subprocess.Popen(list(argv), env=env, preexec_fn=os.setpgrp)
    try:
        code = proc.wait()
    except KeyboardInterrupt:  # forward it; the child stops cleanly and prints its line
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        _drop_log(Outcome(130, log_path))
        raise
    return Outcome(code, log_path)


def crash_detail(log_path: Optional[str]) -> str:
    """The last telling line the native code wrote before dying (not the faulthandler dump)."""
    if not log_path:
        return ""
    try:
        text = Path(log_path).read_text(errors="replace")
    except OSError:
        return ""
    text = text.split("Fatal Python error")[0]
    lines = [ln.strip() for ln in meaningful_lines(text) if ln.strip()]
    return lines[-1][:160] if lines else ""


def crash_message(what: str, outcome: Outcome, *, retried: bool = False) -> str:
    """One line: what crashed, the signal, the last native line, what to do, where the log is."""
    name = outcome.signal_name or f"exit {outcome.code}"
    desc = _DESCRIPTIONS.get(name)
    detail = crash_detail(outcome.log_path)
    said = f"{what} crashed in native code: killed by {name}"
    said += f" ({desc})" if desc else ""
    said += f": {detail}" if detail else ""
    if name == "SIGKILL":
        todo = "free memory or use a smaller --batch-size, then run it again"
    elif retried:
        todo = ("it crashed again with oneDNN off (TF_ENABLE_ONEDNN_OPTS=0): try another "
                "TensorFlow version or a smaller --batch-size")
    else:
        todo = ("run it again with TF_ENABLE_ONEDNN_OPTS=0 in the environment (TensorFlow's "
                "oneDNN kernels crash on some CPUs), or try another TensorFlow version")
    where = f"; its output is in {outcome.log_path}" if outcome.log_path else ""
    return f"{said}; {todo}{where}"


def supervise_cli(argv: Sequence[str], what: str, *, retry_onednn_off: bool) -> tuple[int, str]:
    """Run the CLI ``argv`` (without the program name) in a child and explain a native crash.

    Returns:
        (exit code, a line to print on stderr or ""): the child's own exit code when it
        exited; 1 and the crash line when a signal killed it (after one retry with oneDNN off
        when ``retry_onednn_off`` and the user had not turned it off already).
    """
    cmd = [sys.executable, "-m", "edgekit.cli.main", *argv]
    first = run_child(cmd)
    if first.code >= 0:
        _drop_log(first)
        return first.code, ""
    if first.signal_name == "SIGINT":
        _drop_log(first)
        return 130, ""
    onednn_on = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "").strip() not in ("0", "false")
    if not (retry_onednn_off and onednn_on and first.signal_name != "SIGKILL"):
        return 1, "error: " + crash_message(what, first)
    second = run_child(cmd, ONEDNN_OFF, log_path=first.log_path)
    if second.code < 0 and second.signal_name != "SIGINT":
        return 1, "error: " + crash_message(what, second, retried=True)
    if second.code not in (0, 1):  # bad input or interrupted: the child's own line says it
        _drop_log(second)
        return (130 if second.code < 0 else second.code), ""
    note = (f"note: {what} first crashed with {first.signal_name} in TensorFlow's native code "
            "and was run again with oneDNN off (TF_ENABLE_ONEDNN_OPTS=0)"
            + ("; set TF_ENABLE_ONEDNN_OPTS=0 to skip the crash next time"
               if second.code == 0 else ""))
    _drop_log(second)
    return second.code, note


def _drop_log(outcome: Outcome) -> None:
    """Keep a child's native log only when it failed and wrote something worth reading."""
    path = Path(outcome.log_path)
    with contextlib.suppress(OSError):
        if outcome.code in (0, 2, 130) or not meaningful_lines(path.read_text(errors="replace")):
            path.unlink()


def take_child_role() -> Optional[str]:
    """In a process a supervisor started: its native log's path, taken out of the environment
    (so processes this one starts are not taken for supervised children); None elsewhere."""
    if not os.environ.pop(CHILD_ENV, None):
        return None
    return os.environ.pop(NATIVE_LOG_ENV, None) or os.devnull


def crash_here_if_asked() -> None:
    """Tests: crash this supervised child for real when ``TEST_CRASH_ENV`` says so."""
    asked = os.environ.get(TEST_CRASH_ENV)
    if not asked:
        return
    name, _, condition = asked.partition(":")
    if condition == "onednn" and os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "0":
        return
    import resource

    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file from a test
    sys.stderr.flush()
    # What glibc prints before abort() on a corrupted heap, so the line's detail is exercised.
    os.write(2, b"corrupted double-linked list\n")
    os.kill(os.getpid(), getattr(signal, name))


# --- the Python API: one function in a supervised child -----------------------------------------

def call(fn, *args, what: str = "", retry_onednn_off: bool = False, **kwargs):
    """Run ``fn(*args, **kwargs)`` in a fresh (spawned) process and return its result.

    ``fn`` must be importable (a module-level function) and its arguments and result picklable.
    Exceptions raised by ``fn`` are raised here; warnings it issued are issued here again.

    Raises:
        NativeCrash: the child died of a signal (after one retry with oneDNN off when
            ``retry_onednn_off``).
    """
    what = what or getattr(fn, "__name__", "the job")
    outcome, payload = _spawn(fn, args, kwargs, {})
    if outcome.code < 0 and retry_onednn_off and outcome.signal_name != "SIGKILL" and \
            os.environ.get("TF_ENABLE_ONEDNN_OPTS") != "0":
        log.warning("%s crashed with %s in native code; running it again with oneDNN off "
                    "(TF_ENABLE_ONEDNN_OPTS=0)", what, outcome.signal_name)
        retried = True
        outcome, payload = _spawn(fn, args, kwargs, ONEDNN_OFF, outcome.log_path)
    else:
        retried = False
    if payload is None:
        raise NativeCrash(crash_message(what, outcome, retried=retried),
                          outcome.signal_name or f"exit {outcome.code}", outcome.log_path)
    _drop_log(Outcome(0, outcome.log_path))
    import warnings

    for category, message in payload.get("warnings", []):
        warnings.warn(message, category, stacklevel=2)
    if "error" in payload:
        raise payload["error"]
    return payload["result"]


def _spawn(fn, args, kwargs, env_extra, log_path=None):
    import multiprocessing as mp

    if log_path is None:
        fd, log_path = tempfile.mkstemp(prefix="edgekit-native-", suffix=".log")
        os.close(fd)
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    saved = {k: os.environ.get(k) for k in (*env_extra, CHILD_ENV, NATIVE_LOG_ENV)}
    os.environ.update(env_extra, **{CHILD_ENV: "1", NATIVE_LOG_ENV: log_path})
    try:  # a spawned child takes the environment at start
        proc = ctx.Process(target=_child, args=(child, fn, args, kwargs), daemon=True)
        proc.start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    child.close()
    payload = None
    with contextlib.suppress(EOFError, OSError):
        payload = parent.recv()
    proc.join()
    parent.close()
    code = proc.exitcode if proc.exitcode is not None else -signal.SIGKILL
    return Outcome(code, log_path), payload


def _child(conn, fn, args, kwargs):
    import faulthandler
    import pickle
    import warnings

    from edgekit.quiet import captured_native_output

    with captured_native_output(path=take_child_role()):
        faulthandler.enable(file=2)  # fd 2 is the native log: the Python stack at a crash
        crash_here_if_asked()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                payload = {"result": fn(*args, **kwargs)}
            except Exception as e:  # noqa: BLE001 - sent to the parent, which raises it
                payload = {"error": _picklable(e, pickle)}
        payload["warnings"] = [(w.category, str(w.message)) for w in caught
                               if _picklable_class(w.category, pickle)]
        conn.send(payload)
        conn.close()


def _picklable(exc, pickle):
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any pickling failure: send the text instead
        err = (EdgekitError if isinstance(exc, EdgekitError) else RuntimeError)(
            f"{type(exc).__name__}: {exc}\n{''.join(traceback.format_exception(type(exc), exc, exc.__traceback__))}")
        if isinstance(exc, EdgekitError):
            err.exit_code = exc.exit_code
        return err


def _picklable_class(cls, pickle) -> bool:
    try:
        pickle.dumps(cls)
        return True
    except Exception:  # noqa: BLE001 - a local class: dropped
        return False
