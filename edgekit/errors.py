"""One error hierarchy for edgekit.

Every error carries the exit code the CLI uses for it: 2 for bad input or usage (the user can fix
the command line or the file), 1 for a job that was attempted and failed.
"""

from __future__ import annotations


class EdgekitError(Exception):
    """Root of every error edgekit raises on purpose."""

    exit_code = 1


class InputError(EdgekitError):
    """The user gave something unusable: a missing file, a bad option, a bad value."""

    exit_code = 2


class DocumentError(InputError):
    """A versioned JSON document (``edgekit.envelope``) of another type or of a version this
    edgekit cannot read; the message says which edgekit wrote it and what to do."""


class ModelLoadError(InputError):
    """A source model or artifact could not be read (missing, truncated, unknown format, unsafe)."""


class CalibrationError(InputError):
    """Calibration or evaluation data does not fit the model (shape, dtype, NaN, too few samples)."""


class UnknownTargetError(InputError):
    """A target name that is not in the registry, or not possible for this source."""


class ConversionError(EdgekitError):
    """A converter tool failed on a valid input."""


class VerificationError(EdgekitError):
    """An artifact was produced but could not be run, or failed its fidelity gate."""


class DeviceError(EdgekitError):
    """A device could not be reached, authenticated or used."""


class HostKeyError(DeviceError):
    """A device's SSH host key is unknown or has changed."""

    exit_code = 2


class CommandFailed(DeviceError):
    """A command on a device exited non-zero. Carries the result (argv, code, stdout, stderr)."""

    def __init__(self, result):
        self.result = result
        tail = (result.stderr or result.stdout or "").strip().splitlines()[-5:]
        super().__init__(
            f"command {' '.join(result.argv)!r} exited {result.code} on {result.device}: "
            + (" | ".join(tail) if tail else "no output")
        )


class AgentError(DeviceError):
    """The device agent answered with an error or with a document we cannot read."""
