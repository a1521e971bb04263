"""The `edgekit` command. Each command group lives in its own module and registers itself here."""

from __future__ import annotations

import logging
import os
import sys
import traceback

from edgekit.quiet import quiet_environment

# Flags that ask for the tools' own output (chatter included); without them it is kept quiet.
_LOUD_FLAGS = {"--debug", "-v", "--verbose"}

# TensorFlow and absl log C++ banners to stderr at import, which reads these variables once:
# they must be set before the first TensorFlow import (none happens before a command runs).
if not _LOUD_FLAGS & set(sys.argv[1:]):
    quiet_environment()

import click  # noqa: E402 - after the environment above, on purpose

from edgekit._version import __version__  # noqa: E402
from edgekit.errors import EdgekitError  # noqa: E402

# Command modules, imported for their click commands. Each exposes ``commands``: a list of them.
_COMMAND_MODULES = [
    "edgekit.cli.convert_cmds",
    "edgekit.cli.demo_cmd",
    "edgekit.cli.device_cmds",
    "edgekit.cli.bench_cmds",
    "edgekit.cli.results_cmds",
    "edgekit.cli.train_cmds",
    "edgekit.cli.compress_cmds",
    "edgekit.cli.quant_cmds",
    "edgekit.cli.ship_cmds",
    "edgekit.cli.advise_cmd",
    "edgekit.cli.optimize_cmd",
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgekit")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.option("-v", "--verbose", is_flag=True, help="Show info logs.")
@click.pass_context
def cli(ctx, debug, verbose):
    """Convert, verify, benchmark and ship models to phones and embedded boards."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not (debug or verbose):
        from edgekit.quiet import quiet_python_tools

        quiet_python_tools()


def _register():
    import importlib

    for name in _COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # a command group not written yet
                continue
            raise
        for cmd in mod.commands:
            cli.add_command(cmd)


_register()


# Commands whose TensorFlow work runs in a supervised child (the value: retry a crash once with
# oneDNN off, for training, where the known oneDNN crashes happen).
_SUPERVISED = {"convert": False, "advise": False, "diagnose": False, "qat": True, "prune": True,
               "distill": True, "cluster": True}


def main(argv=None) -> int:
    """Entry point: one line on stderr and an exit code for errors; tracebacks only with --debug.

    Run as the process's entry point (``argv`` None), it also keeps the native tools' stderr
    chatter off the terminal and runs training and conversion commands in a supervised child,
    so a crash of TensorFlow's native code becomes one line. Called with ``argv`` (in-process,
    e.g. from tests) it runs the command here, as is.
    """
    from edgekit import supervise

    args = list(sys.argv[1:] if argv is None else argv)
    # A supervised child appends its native output to the log its parent owns (and reads after
    # a crash); otherwise the capture is an unnamed temp file, named only when a failure needs it.
    child_log = supervise.take_child_role() if argv is None else None
    if argv is None and child_log is None:
        command = next((a for a in args if not a.startswith("-")), None)
        if command in _SUPERVISED and not {"-h", "--help", "--version"} & set(args):
            try:
                code, line = supervise.supervise_cli(args, f"edgekit {command}",
                                                     retry_onednn_off=_SUPERVISED[command])
            except KeyboardInterrupt:  # the child got it too, and said "interrupted"
                return 130
            if line:
                click.echo(line, err=True)
            return code
    if child_log is not None:
        from device_agents.agent import die_with_parent

        die_with_parent()
    if argv is not None or _LOUD_FLAGS & set(args):
        return _run(args, None, child=child_log is not None)
    from edgekit.quiet import captured_native_output

    with captured_native_output(path=child_log) as native:
        if child_log is not None:
            import faulthandler

            faulthandler.enable(file=2)  # a crash's Python stack goes to the log too
        return _run(args, native, child=child_log is not None)


def _native_note(native) -> str:
    """For a failed job: where the tools' own (non-routine) output was kept, if they wrote any."""
    if native is None:
        return ""
    from edgekit.quiet import meaningful_lines

    text = native.read()
    if not meaningful_lines(text):
        return ""
    path = native.path
    if path is None:
        import tempfile

        fd, path = tempfile.mkstemp(prefix="edgekit-tools-", suffix=".log")
        with os.fdopen(fd, "w") as f:
            f.write(text)
    return f" (the tools' own output: {path})"


def _run(args, native, child: bool = False) -> int:
    from edgekit import supervise

    debug = "--debug" in args
    try:
        if child:
            supervise.crash_here_if_asked()
        cli.main(args=args, prog_name="edgekit", standalone_mode=False)
    except EdgekitError as e:
        if debug:
            click.echo(debug_traceback(e), err=True, nl=False)
        note = _native_note(native) if e.exit_code == 1 else ""
        click.echo(f"error: {e}{note}", err=True)
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return 0


def debug_traceback(error: BaseException) -> str:
    """The full traceback of ``error`` for ``--debug``: each exception in its chain, down to the
    tool's own error it was raised from, and (for a convert that failed some targets) the
    chained traceback of every failed target, which the summary error only names.

    Args:
        error: the exception that ends the command.

    Returns:
        The text to print, ending in a newline.
    """
    parts = []
    for target, exc in (getattr(error, "errors", None) or {}).items():
        parts.append(f"--- target {target} failed:\n")
        parts.extend(traceback.format_exception(exc))
    if parts:
        parts.append("--- summary:\n")
    parts.extend(traceback.format_exception(error))
    return "".join(parts)


if __name__ == "__main__":
    sys.exit(main())
