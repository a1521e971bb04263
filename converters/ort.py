"""ort: the float32 ONNX graph saved in ONNX Runtime's mobile (ORT flatbuffer) format.

Uses ORT's own converter (``onnxruntime.tools.convert_onnx_models_to_ort``) with the fixed
optimization style for ARM targets, so the NCHWc layout transformer (x86-only) is left out and
the file runs on phones and boards. Beside the artifact it writes
``<artifact stem>.required_operators.config``: the operator list to pass to ONNX Runtime's
``build.sh --minimal_build --include_ops_by_config`` for a reduced-size mobile runtime.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import shutil
from pathlib import Path

from converters.base import PassResult
from converters.onnx_common import float_model, ort_version, save, source_notes, workdir
from edgekit.errors import ConversionError
from edgekit.fsutil import atomic_output

CONFIG_SUFFIX = ".required_operators.config"
# edgekit.fsutil.temp_path_for names temp files ".<stem>.<8 random chars>.part<suffix>".
_TEMP_NAME = re.compile(r"^\.(?P<stem>.+)\.[A-Za-z0-9_]{8}\.part(?P<suffix>\.[^.]+)$")


def final_path(out_path: Path) -> Path:
    """The artifact's final path: ``out_path`` itself, or the name its atomic temp file stands for."""
    out_path = Path(out_path)
    m = _TEMP_NAME.match(out_path.name)
    return out_path.with_name(m["stem"] + m["suffix"]) if m else out_path


def config_path_for(artifact: Path) -> Path:
    """Where the required-operators config of an ``.ort`` artifact lives (ORT's own naming)."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.stem + CONFIG_SUFFIX)


def convert(source, options, calibration, out_path) -> PassResult:
    """Convert the float32 ONNX graph of ``source`` to ``.ort`` and write its operator config.

    Raises:
        ConversionError: ORT could not load or save the model.
    """
    from onnxruntime.tools.convert_onnx_models_to_ort import (
        OptimizationStyle,
        convert_onnx_models_to_ort,
    )

    model, tools = float_model(source, options)
    out_path = Path(out_path)
    config = config_path_for(final_path(out_path))
    with workdir() as wd:
        onnx_path = Path(wd) / "model.onnx"
        save(model, onnx_path)
        converted = Path(wd) / "out"
        log = io.StringIO()
        # ORT's tool logger is set to INFO by ORT itself; its "Created config in <tmp>" line
        # is noise next to our own progress.
        tool_log = logging.getLogger("ort_format_model.utils")
        level = tool_log.level
        tool_log.setLevel(logging.WARNING)
        try:
            # The tool prints progress to stdout, which belongs to --json: keep it in `log`.
            with contextlib.redirect_stdout(log):
                convert_onnx_models_to_ort(onnx_path, output_dir=converted,
                                           optimization_styles=[OptimizationStyle.Fixed],
                                           target_platform="arm")
        except Exception as e:  # ORT raises its own Fail/RuntimeError types
            raise ConversionError(f"ONNX Runtime could not convert {source.path.name} to ORT "
                                  f"format: {str(e).strip().splitlines()[0][:300]}") from e
        finally:
            tool_log.setLevel(level)
        shutil.copyfile(converted / "model.ort", out_path)
        text = (converted / f"model{CONFIG_SUFFIX}").read_text()
        # ORT lists the converted files by their (temporary) path: name the artifact instead, so
        # the config is the same bytes on every run.
        text = re.sub(r"(?m)^# - .*$", f"# - {final_path(out_path).name}", text)
        with atomic_output(config) as tmp:
            tmp.write_text(text)
    return PassResult(
        tools={**tools, "onnxruntime": ort_version()},
        notes=[*source_notes(source),
               (f"required operators for a reduced-size ONNX Runtime mobile build: {config.name} "
                "(build.sh --minimal_build --include_ops_by_config <that file>)"),
               (f"ORT format written by onnxruntime {ort_version()} (fixed ARM optimizations); "
                "load it with an onnxruntime of the same or a newer version")])
