"""Keep native libraries' chatter off the user's terminal.

TensorFlow, absl, LiteRT, oneDNN and XNNPACK write from C++ straight to file descriptor 2 (and
sometimes 1): ``WARNING: All log messages before absl::InitializeLog()...``, CUDA stub lines,
``fully_quantize: 0, inference_type: 6...``, ``INFO: Created TensorFlow Lite XNNPACK delegate``.
No Python setting reaches those writes, so :func:`captured_native_output` points the descriptors at
a temporary file while Python's own ``sys.stdout`` / ``sys.stderr`` keep writing to the real ones.
The captured text is kept for ``--debug`` and for failures, never thrown away unseen.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import tempfile
import warnings
from typing import Iterator, Optional

log = logging.getLogger(__name__)

# Set before the first TensorFlow import. Not TF_ENABLE_ONEDNN_OPTS: oneDNN changes numerics and
# speed, so it is the user's choice (the supervisor turns it off only to retry a crash).
QUIET_ENVIRONMENT = {
    "TF_CPP_MIN_LOG_LEVEL": "2",  # TensorFlow's C++ INFO and WARNING lines
    "GRPC_VERBOSITY": "ERROR",
    "GLOG_minloglevel": "2",
    "ABSL_MIN_LOG_LEVEL": "2",
}

# Python loggers of the tools; their INFO/WARNING lines are ours to show only with -v / --debug.
TOOL_LOGGERS = ("tensorflow", "absl", "tf2onnx", "h5py", "jax", "onnx2tf", "keras", "tf_keras")
_TOOL_WARNING_MODULES = r"(tensorflow|tf_keras|keras|tf2onnx|absl|h5py|jax|google\.protobuf)(\..*)?"

# Lines the tools print on every run; anything else captured is worth keeping after a failure.
_CHATTER = re.compile(
    r"All log messages before absl::InitializeLog|cudart_stub|cuda_platform|cuda_executor"
    r"|cuda_dnn|cuda_fft|cuda_blas|cuInit|cpu_feature_guard|rebuild TensorFlow with the appropriate"
    r"|oneDNN custom operations are on|TF_ENABLE_ONEDNN_OPTS|fully_quantize: |"
    r"Created TensorFlow Lite|Initialized TensorFlow Lite runtime|TF-TRT Warning"
    r"|Unable to register cu(DNN|FFT|BLAS) factory|computation placer already registered"
    r"|absl::InitializeLog|^\s*$|^[IW]\d{4} ")


def quiet_environment(env=None) -> None:
    """Set the tools' log-level variables in ``env`` (default ``os.environ``) unless the user
    already chose them. Call before TensorFlow is imported; it reads them once."""
    env = os.environ if env is None else env
    for key, value in QUIET_ENVIRONMENT.items():
        env.setdefault(key, value)


class _RootChatter(logging.Filter):
    """Drops records below ERROR logged on the *root* logger. edgekit logs only on named loggers;
    ONNX Runtime's quantizer calls ``logging.warning`` directly (e.g. "Axis 1 is out-of-range for
    weight ... LayerNorm.weight", once per LayerNorm per pass: 50+ lines for a small BERT)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != "root" or record.levelno >= logging.ERROR


def quiet_python_tools() -> None:
    """Tools' Python loggers to ERROR, root-logger chatter off, and their Python warnings off
    (the CLI without -v)."""
    for name in TOOL_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _RootChatter) for f in handler.filters):
            handler.addFilter(_RootChatter())
    warnings.filterwarnings("ignore", module=_TOOL_WARNING_MODULES)


def meaningful_lines(text: str) -> list[str]:
    """The captured lines that are not the tools' routine chatter (see ``_CHATTER``)."""
    return [ln for ln in text.splitlines() if not _CHATTER.search(ln)]


class NativeOutput:
    """What the native code wrote while captured; ``text`` is complete once the block exits."""

    def __init__(self, file, path: Optional[str]):
        self._file = file
        self.path = path
        self.text = ""

    def read(self) -> str:
        """Everything captured so far (also while the block still runs)."""
        with contextlib.suppress(ValueError, OSError):
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(ValueError, OSError, AttributeError):
                    stream.flush()
            self._file.flush()
            self._file.seek(0)
            self.text = self._file.read().decode("utf-8", "replace")
            self._file.seek(0, io.SEEK_END)
        return self.text


_depth = 0  # captures nested in this process (an inner one hands its text to the outer one)


@contextlib.contextmanager
def captured_native_output(fds=(2,), path: Optional[str] = None) -> Iterator[NativeOutput]:
    """Point file descriptors ``fds`` at a temporary file (or ``path``) for the block.

    Python's ``sys.stdout`` / ``sys.stderr`` (and the logging handlers that write to them) are
    moved to duplicates of the real descriptors, so edgekit's own lines still reach the terminal
    while C/C++ writes to fd 1/2 are captured. An inner capture passes its text on to the outer
    one when it ends, so the outermost sees everything.

    Args:
        fds: the descriptors to capture (1 and/or 2).
        path: keep the capture in this file (appended), e.g. for a supervisor to read after the
            process crashed; default an anonymous temporary file.

    Yields:
        a :class:`NativeOutput`; its ``text`` is filled when the block exits.
    """
    global _depth
    streams = {1: "stdout", 2: "stderr"}
    for name in streams.values():
        with contextlib.suppress(ValueError, OSError, AttributeError):
            getattr(sys, name).flush()
    file = open(path, "a+b") if path else tempfile.TemporaryFile()  # closed below
    saved = {fd: os.dup(fd) for fd in fds}
    swapped = {}
    for fd in fds:
        name = streams[fd]
        stream = getattr(sys, name)
        if _writes_to(stream, fd):
            replacement = io.TextIOWrapper(os.fdopen(os.dup(saved[fd]), "wb", buffering=0),
                                           encoding=getattr(stream, "encoding", None) or "utf-8",
                                           errors="backslashreplace", line_buffering=True,
                                           write_through=True)
            swapped[name] = (stream, replacement)
            setattr(sys, name, replacement)
            _repoint_handlers(stream, replacement)
        os.dup2(file.fileno(), fd)
    captured = NativeOutput(file, path)
    _depth += 1
    try:
        yield captured
    finally:
        _depth -= 1
        text = captured.read()
        for fd in fds:
            os.dup2(saved[fd], fd)
            os.close(saved[fd])
        for name, (original, replacement) in swapped.items():
            setattr(sys, name, original)
            _repoint_handlers(replacement, original)
            with contextlib.suppress(ValueError, OSError):
                replacement.close()
        file.close()
        if text and _depth > 0:  # an outer capture keeps it for its failure report
            with contextlib.suppress(OSError):
                os.write(2, text.encode("utf-8", "replace"))
        elif text.strip():
            log.info("native output of the tools:\n%s", text.rstrip())


def _writes_to(stream, fd: int) -> bool:
    try:
        return stream is not None and stream.fileno() == fd
    except (AttributeError, ValueError, OSError, io.UnsupportedOperation):
        return False  # e.g. pytest's capsys: Python-level already, nothing to move


def _repoint_handlers(old, new) -> None:
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is old:
                handler.setStream(new)
