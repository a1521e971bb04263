"""What ``optimize`` searches over.

A trial's Optuna parameters (``target``, ``threads``, the onnx-int8 knobs...) become a ``Recipe``
here; the same parameters always give the same recipe name and build key, so a recipe sampled
twice is built once (``edgekit.search.build.BuildCache``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields, replace

from converters.options import ConvertOptions
from converters.registry import get_target, targets_for
from edgekit.errors import InputError
from edgekit.gate import QUANTIZED
from edgekit.recipe import CompressStep, PruneStep, Recipe, StudentStep, options_to_json

log = logging.getLogger(__name__)

#: Names of the trial parameters (Optuna's), one place.
P_TARGET, P_THREADS, P_REPAIR = "target", "threads", "repair"
P_ACT, P_RR, P_CALIB, P_PER_CHANNEL = ("onnx_int8_activations", "onnx_int8_reduce_range",
                                       "onnx_int8_calibration", "onnx_int8_per_channel")
P_QFORMAT = "onnx_int8_format"
P_TFL_PER_CHANNEL = "tflite_int8_per_channel"
P_XNNPACK, P_ORT_OPT = "xnnpack", "ort_opt_level"  # runtime settings, measured on the device
P_STUDENT, P_STUDENT_EPOCHS = "student", "student_epochs"  # architecture scaling
NO_STUDENT = "none"
P_PRUNE, P_CRITERION, P_EPOCHS, P_LR, P_DISTILL, P_TEMP, P_ALPHA = (
    "prune_ratio", "prune_criterion", "finetune_epochs", "finetune_learning_rate", "distill",
    "distill_temperature", "distill_alpha")
P_SPARSITY, P_CLUSTERS, P_C_EPOCHS, P_C_LR = ("compress_sparsity", "compress_clusters",
                                              "compress_epochs", "compress_learning_rate")
# The .ort target is left out: ONNX Runtime serialises it from hash maps, so two builds of one
# graph differ in byte order and a recipe could not be replayed byte-identically (it runs the
# same graph as onnx-fp32 in the same runtime, so the search loses no speed by it).
NOT_REPLAYABLE = ("ort",)
_INT8 = ("tflite-int8", "onnx-int8")


@dataclass(frozen=True)
class SearchSpace:
    """The dimensions ``optimize`` samples.

    Attributes:
        targets: registry targets to try (default: every target for the source format, except
            the ones that cannot be replayed byte-identically, ``NOT_REPLAYABLE``).
        threads: runtime thread counts to try on the device.
        onnx_int8_variants: search onnx-int8's activation signedness (S8S8/U8S8), 7-bit weights,
            calibration method, per-channel scales and operator format (QDQ/QOperator).
        tflite_int8_per_tensor: also try tflite-int8 with one weight scale per tensor
            (``ConvertOptions.per_channel=False``): a clustered layer then keeps <= k int8
            values and the file loses its per-channel scale arrays (smaller gzip). A
            conversion option, no training: on by default.
        xnnpack: for TFLite targets, run with LiteRT's XNNPACK delegate (True) and/or with its
            built-in kernels only (False); both are measured by default.
        ort_opt_levels: for ONNX targets, ONNX Runtime graph optimization levels to measure
            (``ORT_OPT_LEVELS`` names; "disable" is left out by default: it only undoes fusions).
        repair: search automatic mixed precision for the int8 targets (ops kept in float when
            the fidelity gate is missed).
        prune_ratios: structured pruning ratios to try (0 = unpruned); empty: no pruning. Needs
            training data: each pruned model is fine-tuned, its criterion, epochs, learning rate
            and distillation (temperature, alpha) searched too.
        finetune_epochs / learning_rates / temperatures / alphas: the fine-tuning choices.
        finetune_stop_margin: a fine-tune whose eval accuracy after an epoch is more than the
            accuracy budget plus this many points below the source is stopped, its trial
            pruned (``edgekit.search.pruner``); None: fine-tunes always run to the end.
        arch_scaling: also try smaller students of a ``keras.applications`` MobileNetV2/V3 or
            EfficientNet(V2) source, or of a model with one as its backbone, distilled from it
            on the training data (``edgekit.training.students``); off by default: it
            costs training time, estimated and printed before the search starts.
        arch_alphas / arch_resolution_scales: the students' width multipliers (MobileNets;
            EfficientNets step down B-variants instead) and input resolutions (fractions of the
            source's), those not larger than the source's.
        arch_epochs: distillation epochs per student.
        arch_students: the student names found for the source (set by ``optimize``).
        compress: also try magnitude sparsity and/or weight clustering of the source,
            fine-tuned on the training data (``edgekit.training.compress``); off by default:
            it costs training time, estimated and printed before the search starts.
        compress_sparsities / compress_clusters: the choices (0: that step is not applied;
            both 0: the source uncompressed).
        compress_epochs / compress_learning_rates: the compression fine-tune's choices (as
            the pruning fine-tune's; 1e-3 recovered the digits CNN best after 80% + k=16).
    """

    targets: tuple = ()
    threads: tuple = (1, 2)
    onnx_int8_variants: bool = True
    repair: bool = True
    xnnpack: tuple = (True, False)
    ort_opt_levels: tuple = ("all", "extended", "basic")
    prune_ratios: tuple = ()
    finetune_epochs: tuple = (1, 3)
    learning_rates: tuple = (1e-3, 3e-4)
    temperatures: tuple = (2.0, 4.0)
    alphas: tuple = (0.5, 0.9)
    finetune_stop_margin: float | None = 10.0
    arch_scaling: bool = False
    arch_alphas: tuple = (0.35, 0.5, 0.75)
    arch_resolution_scales: tuple = (1.0, 0.75, 0.5)
    arch_epochs: int = 3
    arch_students: tuple = ()
    tflite_int8_per_tensor: bool = True
    compress: bool = False
    compress_sparsities: tuple = (0.0, 0.5, 0.8)
    compress_clusters: tuple = (0, 16, 32)
    compress_epochs: tuple = (1, 3)
    compress_learning_rates: tuple = (1e-3, 3e-4)

    def resolve(self, source_format: str, cores: int | None) -> SearchSpace:
        """This space with the targets the source supports and threads the device has.

        Raises:
            InputError: a target that does not exist for this source format, or none left.
        """
        fmt = "h5" if source_format == "h5" else source_format
        possible = [t.name for t in targets_for(fmt) if t.name not in NOT_REPLAYABLE]
        wanted = list(self.targets) or possible
        bad = [t for t in wanted if t not in possible]
        if bad:
            raise InputError(f"target(s) {bad} cannot be searched for a {source_format} model; "
                             f"possible: {', '.join(possible)}")
        threads = sorted({t for t in self.threads if t >= 1 and (cores is None or t <= cores)}
                         or {1})
        from edgekit.devices.device import ORT_OPT_LEVELS

        bad = [x for x in self.ort_opt_levels if x not in ORT_OPT_LEVELS]
        if bad or not self.ort_opt_levels:
            raise InputError(f"ORT optimization levels must be some of {list(ORT_OPT_LEVELS)}, "
                             f"got {list(self.ort_opt_levels)}")
        if not self.xnnpack or any(not isinstance(x, bool) for x in self.xnnpack):
            raise InputError(f"xnnpack choices must be True and/or False, got {list(self.xnnpack)}")
        ratios = tuple(sorted({float(r) for r in self.prune_ratios}))
        if any(not 0 <= r < 1 for r in ratios):
            raise InputError(f"prune ratios must be in [0, 1), got {list(ratios)}")
        if fmt not in ("keras", "h5") and any(ratios):
            raise InputError(f"pruning works on Keras models (.keras/.h5), not {source_format}")
        sparsities = tuple(sorted({float(s) for s in self.compress_sparsities}))
        clusters = tuple(sorted({int(k) for k in self.compress_clusters}))
        if self.compress:
            if fmt not in ("keras", "h5"):
                raise InputError(f"compression (sparsity, clustering) works on Keras models "
                                 f"(.keras/.h5), not {source_format}")
            if any(not 0 <= s < 1 for s in sparsities):
                raise InputError(f"compress sparsities must be in [0, 1), got {list(sparsities)}")
            if any(k != 0 and not 2 <= k <= 256 for k in clusters):
                raise InputError(f"compress clusters must be 0 (none) or 2..256, got "
                                 f"{list(clusters)}")
            if not any(sparsities) and not any(clusters):
                raise InputError("compress searches sparsity and/or clusters: give a sparsity "
                                 "> 0 or clusters >= 2")
            if not self.compress_epochs or any(int(e) < 1 for e in self.compress_epochs):
                raise InputError(f"compress epochs must be >= 1, got "
                                 f"{list(self.compress_epochs)}")
            if not self.compress_learning_rates or any(
                    not lr > 0 for lr in self.compress_learning_rates):
                raise InputError(f"compress learning rates must be > 0, got "
                                 f"{list(self.compress_learning_rates)}")
        return replace(self, targets=tuple(wanted), threads=tuple(threads), prune_ratios=ratios,
                       compress_sparsities=sparsities or (0.0,), compress_clusters=clusters or (0,),
                       xnnpack=tuple(dict.fromkeys(self.xnnpack)),
                       ort_opt_levels=tuple(dict.fromkeys(self.ort_opt_levels)))

    def to_dict(self) -> dict:
        return {f.name: list(getattr(self, f.name)) if isinstance(getattr(self, f.name), tuple)
                else getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, doc: dict) -> SearchSpace:
        known = {f.name for f in fields(cls)}
        # A study written before tflite-int8's per-tensor dimension existed resumes with the
        # space it was started with.
        doc = {"tflite_int8_per_tensor": False, **doc}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in doc.items()
                      if k in known})

    def suggest(self, trial) -> dict:
        """Sample one point; the parameters that do not apply to the target are not sampled."""
        params = {P_TARGET: trial.suggest_categorical(P_TARGET, list(self.targets))}
        target = params[P_TARGET]
        if target == "onnx-int8" and self.onnx_int8_variants:
            params[P_ACT] = trial.suggest_categorical(P_ACT, ["s8s8", "u8s8"])
            params[P_RR] = trial.suggest_categorical(P_RR, [False, True])
            params[P_CALIB] = trial.suggest_categorical(P_CALIB, ["minmax", "percentile"])
            params[P_PER_CHANNEL] = trial.suggest_categorical(P_PER_CHANNEL, [True, False])
            params[P_QFORMAT] = trial.suggest_categorical(P_QFORMAT, ["qdq", "qoperator"])
        if target == "tflite-int8" and self.tflite_int8_per_tensor:
            params[P_TFL_PER_CHANNEL] = trial.suggest_categorical(P_TFL_PER_CHANNEL,
                                                                  [True, False])
        if target in _INT8 and self.repair:
            params[P_REPAIR] = trial.suggest_categorical(P_REPAIR, [False, True])
        params[P_THREADS] = trial.suggest_categorical(P_THREADS, list(self.threads))
        fmt = get_target(target).format
        if fmt == "tflite":
            params[P_XNNPACK] = trial.suggest_categorical(P_XNNPACK, list(self.xnnpack))
        elif fmt in ("onnx", "ort"):
            params[P_ORT_OPT] = trial.suggest_categorical(P_ORT_OPT, list(self.ort_opt_levels))
        student = NO_STUDENT
        if self.arch_students:
            student = trial.suggest_categorical(P_STUDENT, [NO_STUDENT, *self.arch_students])
            params[P_STUDENT] = student
            if student != NO_STUDENT:
                params[P_STUDENT_EPOCHS] = trial.suggest_categorical(P_STUDENT_EPOCHS,
                                                                     [self.arch_epochs])
        if self.prune_ratios and student == NO_STUDENT:  # a student is not pruned as well
            ratio = trial.suggest_categorical(P_PRUNE, list(self.prune_ratios))
            params[P_PRUNE] = ratio
            if ratio > 0:
                params[P_CRITERION] = trial.suggest_categorical(P_CRITERION, ["l1", "l2"])
                params[P_EPOCHS] = trial.suggest_categorical(P_EPOCHS, list(self.finetune_epochs))
                params[P_LR] = trial.suggest_categorical(P_LR, list(self.learning_rates))
                params[P_DISTILL] = trial.suggest_categorical(P_DISTILL, [False, True])
                if params[P_DISTILL]:
                    params[P_TEMP] = trial.suggest_categorical(P_TEMP, list(self.temperatures))
                    params[P_ALPHA] = trial.suggest_categorical(P_ALPHA, list(self.alphas))
        if self.compress:
            s = trial.suggest_categorical(P_SPARSITY, list(self.compress_sparsities))
            k = trial.suggest_categorical(P_CLUSTERS, list(self.compress_clusters))
            params[P_SPARSITY], params[P_CLUSTERS] = s, k
            if s or k:
                params[P_C_EPOCHS] = trial.suggest_categorical(P_C_EPOCHS,
                                                               list(self.compress_epochs))
                params[P_C_LR] = trial.suggest_categorical(P_C_LR,
                                                           list(self.compress_learning_rates))
        return params

    def seeds(self) -> list[tuple[dict, str]]:
        """(params, role) always measured first: each runtime's fp32 ("baseline") and each raw
        tool's default int8 ("tool-default": LiteRT's full-integer and ONNX Runtime's QDQ S8S8
        with per-channel minmax), all at one thread and the runtimes' default settings (XNNPACK
        on, ORT level "all") where the space has them."""
        out = []
        for t in self.targets:
            if get_target(t).precision == "fp32":
                out.append((self._runtime_defaults(t, {P_TARGET: t, P_THREADS: 1}), "baseline"))
        for t in _INT8:
            if t in self.targets:
                p = self._runtime_defaults(t, {P_TARGET: t, P_THREADS: 1})
                if t == "onnx-int8" and self.onnx_int8_variants:
                    p.update({P_ACT: "s8s8", P_RR: False, P_CALIB: "minmax", P_PER_CHANNEL: True,
                              P_QFORMAT: "qdq"})
                if t == "tflite-int8" and self.tflite_int8_per_tensor:
                    p[P_TFL_PER_CHANNEL] = True  # LiteRT's default
                if self.repair:
                    p[P_REPAIR] = False
                out.append((p, "tool-default"))
        if self.prune_ratios:
            for p, _ in out:
                p[P_PRUNE] = 0.0
            pruned = [r for r in self.prune_ratios if r > 0]
            fp32 = [t for t in self.targets if get_target(t).precision == "fp32"]
            if pruned and fp32:  # one pruned point measured early, so the sampler has one
                out.append((self._runtime_defaults(fp32[0], {
                    P_TARGET: fp32[0], P_THREADS: 1, P_PRUNE: max(pruned), P_CRITERION: "l1",
                    P_EPOCHS: min(self.finetune_epochs), P_LR: self.learning_rates[0],
                    P_DISTILL: False}), "pruning-probe"))
        if self.arch_students:
            for p, _ in out:
                p.setdefault(P_STUDENT, NO_STUDENT)
            fp32 = [t for t in self.targets if get_target(t).precision == "fp32"]
            if fp32:  # the mildest student measured early, so the sampler has one
                out.append((self._runtime_defaults(fp32[0], {
                    P_TARGET: fp32[0], P_THREADS: 1, P_STUDENT: self.arch_students[0],
                    P_STUDENT_EPOCHS: self.arch_epochs}), "arch-probe"))
        if self.compress:
            for p, _ in out:
                p.setdefault(P_SPARSITY, 0.0)
                p.setdefault(P_CLUSTERS, 0)
            probe = self._compress_probe()
            if probe is not None:  # the strongest compression measured early
                out.append((probe, "compress-probe"))
        return out

    def _compress_probe(self) -> dict | None:
        """The strongest sparsity with the fewest clusters, fine-tuned for the fewest epochs,
        on per-tensor tflite-int8 when it is searched (the smallest file: a clustered layer
        keeps <= k int8 values), else the first fp32 target."""
        s, k = max(self.compress_sparsities), min((c for c in self.compress_clusters if c),
                                                  default=0)
        if not s and not k:
            return None
        fp32 = [t for t in self.targets if get_target(t).precision == "fp32"]
        if "tflite-int8" in self.targets:
            target = "tflite-int8"
        elif fp32:
            target = fp32[0]
        else:
            return None
        p = self._runtime_defaults(target, {P_TARGET: target, P_THREADS: 1, P_SPARSITY: s,
                                            P_CLUSTERS: k, P_C_EPOCHS: min(self.compress_epochs),
                                            P_C_LR: self.compress_learning_rates[0]})
        if target == "tflite-int8":
            if self.tflite_int8_per_tensor:
                p[P_TFL_PER_CHANNEL] = False
            if self.repair:
                p[P_REPAIR] = False
        if self.prune_ratios:
            p[P_PRUNE] = 0.0
        if self.arch_students:
            p[P_STUDENT] = NO_STUDENT
        return p

    def _runtime_defaults(self, target: str, params: dict) -> dict:
        """``params`` with the runtime's default setting for ``target`` (when searched): an
        enqueued trial that leaves a searched parameter out gets it sampled at random."""
        fmt = get_target(target).format
        if fmt == "tflite":
            params[P_XNNPACK] = True if True in self.xnnpack else self.xnnpack[0]
        elif fmt in ("onnx", "ort"):
            params[P_ORT_OPT] = "all" if "all" in self.ort_opt_levels else self.ort_opt_levels[0]
        return params


def recipe_from_params(params: dict, gate: ConvertOptions | None = None,
                       train=None) -> Recipe:
    """The Recipe a trial's parameters stand for (``gate``: the fidelity-gate fields added to
    quantized targets' options; ``train``: the FileRef of the fine-tuning data)."""
    target = params[P_TARGET]
    info = get_target(target)
    opts = ConvertOptions()
    name = [target]
    if params.get(P_ACT) == "u8s8":
        opts = _set(opts, unsigned_activations=True)
        name.append("u8s8")
    if params.get(P_RR):
        opts = _set(opts, reduce_range=True)
        name.append("reduce-range")
    if params.get(P_CALIB) == "percentile":
        from converters.options import CalibrationMethod

        opts = _set(opts, calibration_method=CalibrationMethod.PERCENTILE)
        name.append("percentile")
    if params.get(P_PER_CHANNEL) is False or params.get(P_TFL_PER_CHANNEL) is False:
        opts = _set(opts, per_channel=False)
        name.append("per-tensor")
    if params.get(P_QFORMAT) == "qoperator":
        from converters.options import OnnxQuantFormat

        opts = _set(opts, onnx_quant_format=OnnxQuantFormat.QOPERATOR)
        name.append("qop")
    if params.get(P_REPAIR):
        opts = _set(opts, repair=True)
        name.append("mixed")
    if gate is not None and info.precision in QUANTIZED:
        opts = _set(opts, max_accuracy_drop=gate.max_accuracy_drop,
                    min_top1_agreement=gate.min_top1_agreement, min_sqnr_db=gate.min_sqnr_db)
    prune = None
    if params.get(P_PRUNE):
        distill = bool(params[P_DISTILL])
        kd = {"temperature": float(params[P_TEMP]), "alpha": float(params[P_ALPHA])} \
            if distill else {}
        prune = PruneStep(float(params[P_PRUNE]), params[P_CRITERION], int(params[P_EPOCHS]),
                          float(params[P_LR]), distill, seed=0, train=train, **kd)
        name.append(f"pruned{round(100 * prune.ratio)}-{prune.criterion}-"
                    f"e{prune.epochs}-lr{prune.learning_rate:g}")
        if prune.distill:
            name.append(f"kd-T{prune.temperature:g}-a{prune.alpha:g}")
    student = None
    if params.get(P_STUDENT, NO_STUDENT) != NO_STUDENT:
        from edgekit.training.students import parse_student

        student = StudentStep(**parse_student(params[P_STUDENT]),
                              epochs=int(params[P_STUDENT_EPOCHS]), seed=0, train=train)
        name.append(f"{params[P_STUDENT]}-e{student.epochs}")
    compress = None
    if params.get(P_SPARSITY) or params.get(P_CLUSTERS):
        from edgekit.training.compress import compress_name

        compress = CompressStep(
            float(params[P_SPARSITY]) if params.get(P_SPARSITY) else None,
            int(params[P_CLUSTERS]) if params.get(P_CLUSTERS) else None,
            int(params[P_C_EPOCHS]), float(params[P_C_LR]), seed=0, train=train)
        name.append(compress_name(compress))
    threads = int(params.get(P_THREADS, 1))
    if threads != 1:
        name.append(f"t{threads}")
    xnnpack = bool(params.get(P_XNNPACK, True))
    if not xnnpack:
        name.append("no-xnnpack")
    ort_level = params.get(P_ORT_OPT, "all")
    if ort_level != "all":
        name.append(f"ort-{ort_level}")
    return Recipe("-".join(name), target, options_to_json(opts), threads, prune=prune,
                  xnnpack=xnnpack, ort_opt_level=ort_level, student=student,
                  compress=compress)


def _set(opts: ConvertOptions, **values) -> ConvertOptions:
    return replace(opts, **values)


__all__ = ["SearchSpace", "recipe_from_params", "NOT_REPLAYABLE"]
