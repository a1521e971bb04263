"""edgekit: convert, verify, benchmark and ship models to phones and embedded boards."""

from edgekit._version import __version__
from edgekit.errors import (
    AgentError,
    CalibrationError,
    CommandFailed,
    ConversionError,
    DeviceError,
    DocumentError,
    EdgekitError,
    HostKeyError,
    InputError,
    ModelLoadError,
    UnknownTargetError,
    VerificationError,
)


def __getattr__(name):
    # The API is imported lazily so `import edgekit` stays cheap (no TensorFlow at start-up).
    if name in ("convert", "inspect_artifact", "diagnose"):
        from edgekit import api

        return getattr(api, name)
    if name in ("advise", "Advice"):
        from edgekit.search import advisor

        return getattr(advisor, name)
    if name == "optimize":
        from edgekit.search.loop import optimize

        return optimize
    if name == "Study":
        from edgekit.search.study import Study

        return Study
    if name == "Constraints":
        from edgekit.search.settings import Constraints

        return Constraints
    if name == "SearchSpace":
        from edgekit.search.space import SearchSpace

        return SearchSpace
    if name in ("Recipe", "load_recipe"):
        from edgekit import recipe

        return getattr(recipe, name)
    if name in ("benchmark", "BenchOptions"):
        from edgekit import bench

        return getattr(bench, name)
    if name in ("Result", "ResultStore"):
        from edgekit import results

        return getattr(results, name)
    if name in ("prune", "distill", "sparsify", "qat", "profile", "cluster", "lottery_ticket",
                "sparse_train"):
        from edgekit import train_api

        return getattr(train_api, name)
    if name == "write_report":
        from edgekit.report import write_report

        return write_report
    if name in ("build_bundle", "BundleOptions"):
        from edgekit import bundle

        return getattr(bundle, name)
    if name in ("Artifact", "Fidelity", "read_manifest"):
        from edgekit import artifact

        return getattr(artifact, name)
    if name in ("ConvertOptions", "CalibrationMethod"):
        import converters

        return getattr(converters, name)
    raise AttributeError(f"module 'edgekit' has no attribute {name!r}")


__all__ = [
    "convert", "inspect_artifact", "diagnose", "advise", "Advice", "benchmark", "BenchOptions",
    "optimize", "Study", "Constraints", "SearchSpace", "Recipe", "load_recipe",
    "Result", "ResultStore", "prune", "distill", "sparsify", "qat", "profile", "cluster",
    "lottery_ticket", "sparse_train", "write_report",
    "build_bundle", "BundleOptions",
    "Artifact", "Fidelity", "read_manifest", "ConvertOptions",
    "CalibrationMethod", "EdgekitError", "InputError", "ModelLoadError", "CalibrationError",
    "UnknownTargetError", "ConversionError", "VerificationError", "DeviceError", "HostKeyError",
    "CommandFailed", "AgentError", "DocumentError", "__version__",
]
