"""The content-addressed build cache ``optimize``'s trials share, and how a trial fails.

The same recipe always has the same build key (``Recipe.build_key``), so a recipe sampled twice
is built once, even by two worker processes at the same time.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from converters.options import ConvertOptions
from edgekit.errors import ConversionError, EdgekitError
from edgekit.recipe import Recipe

#: Set to ``build:<substring>`` or ``run:<substring>`` to make trials whose recipe name contains
#: the substring fail on purpose: the build raises, or the device run gets a 1 MiB address-space
#: cap so the agent's measuring process really crashes (tests of "failures are results").
FAULT_ENV = "EDGEKIT_OPTIMIZE_FAULT"


class TrialFailed(EdgekitError):
    """A trial's recipe could not be built, missed the gate, or failed on the device.

    Attributes:
        stage: "convert", "gate", "compress" (the compress step refused the model) or
            "benchmark".
    """

    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage


def fault_for(recipe_name: str) -> str | None:
    """The stage (``build`` or ``run``) the fault injection ``FAULT_ENV`` names for this recipe."""
    spec = os.environ.get(FAULT_ENV, "")
    stage, _, needle = spec.partition(":")
    if stage in ("build", "run") and needle and needle in recipe_name:
        return stage
    return None


@dataclass
class BuildCache:
    """Artifacts by content address (source + calibration + target + options + training
    steps: ``Recipe.build_key``): a folder per key holding the convert output (artifact +
    manifest.json), or ``failed.json`` with why.

    Builds go to a temporary folder renamed into place, so two workers building one key at once
    both end up with the same complete folder.
    """

    folder: Path
    source_sha256: str
    calibration_sha256: str | None
    train: str | None = None
    hits: int = field(default=0)

    def path_for(self, recipe: Recipe) -> Path:
        return self.folder / recipe.build_key(self.source_sha256, self.calibration_sha256)[:24]

    def build(self, recipe: Recipe, model, *, calibration, eval, base: ConvertOptions,
              callbacks=None):
        """The recipe's Artifact, built now or taken from the cache.

        Args:
            callbacks: for a recipe that fine-tunes: ``prune_source``'s callbacks (passed on by
                ``recipe.trained_source``, the steps ``convert --recipe`` replays).

        Raises:
            TrialFailed: the build failed or missed the gate (now or when first built).
            optuna.TrialPruned: its fine-tune was stopped as hopeless (now or when first built:
                ``pruned.json`` keeps why, so the same recipe is not fine-tuned again).
        """
        import optuna

        from edgekit.api import convert
        from edgekit.artifact import MANIFEST_NAME, read_manifest
        from edgekit.training.replay import CompressRefused, trained_source

        final = self.path_for(recipe)
        if (final / "failed.json").is_file():
            doc = json.loads((final / "failed.json").read_text())
            self.hits += 1
            raise TrialFailed(doc["stage"], doc["error"])
        if (final / "pruned.json").is_file():
            self.hits += 1
            raise optuna.TrialPruned(json.loads((final / "pruned.json").read_text())["reason"])
        if (final / MANIFEST_NAME).is_file():
            self.hits += 1
            return read_manifest(final)[0]
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        failure = pruned = None
        try:
            if fault_for(recipe.name) == "build":
                raise ConversionError(f"fault injected by {FAULT_ENV}="
                                      f"{os.environ.get(FAULT_ENV)!r}: build of {recipe.name} "
                                      "refused on purpose")
            try:
                source = trained_source(recipe, model, self.train, tmp, callbacks=callbacks)
            except CompressRefused as e:  # e.g. nothing to cluster: this recipe fails, the
                raise TrialFailed("compress", str(e)) from e  # search goes on
            convert(source, [recipe.target], calibration=calibration, eval=eval, out=tmp,
                    options=recipe.options(base))
        except (ConversionError, TrialFailed) as e:
            msg = next(iter((getattr(e, "failures", None) or {}).values()), str(e))
            failure = (e.stage if isinstance(e, TrialFailed) else
                       "gate" if "missed the fidelity gate" in msg else "convert", msg)
            tmp.mkdir(parents=True, exist_ok=True)
            (tmp / "failed.json").write_text(json.dumps({"stage": failure[0],
                                                         "error": failure[1]}))
        except optuna.TrialPruned as e:  # a hopeless fine-tune: remembered, not a failure
            pruned = e
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            (tmp / "pruned.json").write_text(json.dumps({"reason": str(e)}))
        try:
            os.rename(tmp, final)
        except OSError:  # another worker put the same key in place first: theirs is equal
            shutil.rmtree(tmp, ignore_errors=True)
            if not final.is_dir():
                raise
        if failure is not None:
            raise TrialFailed(*failure)
        if pruned is not None:
            raise pruned
        return read_manifest(final)[0]



__all__ = ["BuildCache", "TrialFailed", "fault_for", "FAULT_ENV"]
