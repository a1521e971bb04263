"""``plan_pruning``: which channels each coupled group keeps, as plain, replayable data.

A plan is computed from a model and a ``PruneSpec``, can be saved as JSON, reviewed, edited, and
applied later (``apply_plan``) to the same model; it is refused by any other model.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from converters.pruning.criteria import group_scores, taylor_gradients
from converters.pruning.graph import DependencyGraph
from converters.pruning.spec import Criterion, PruneSpec, PruningWarning
from edgekit.envelope import unwrap, wrap
from edgekit.errors import InputError

log = logging.getLogger(__name__)

PLAN_TYPE = "edgekit.pruning_plan"
PLAN_VERSION = 1
_OLD_TYPE = "edgekit.PruningPlan"  # the nested envelope's name, before edgekit.envelope


@dataclass
class GroupPlan:
    """One coupled group in a plan.

    Attributes:
        id: ``"group:<first producer>"``.
        channels: channels the group has now.
        keep: indices kept, ascending (all of them when the group is not pruned).
        status: ``"pruned"``, ``"unchanged"``, ``"protected"`` or ``"blocked"``.
        producers: layers whose output channels these are.
        members: every layer touched (see ``graph.Group.members``).
        reasons: why a group is blocked or protected.
        scores: ``{"criterion", "min", "mean", "max"}`` of the channel scores, if scored.
    """

    id: str
    channels: int
    keep: list
    status: str
    producers: list
    members: list = field(default_factory=list)
    reasons: list = field(default_factory=list)
    scores: dict | None = None

    def to_dict(self) -> dict:
        return {"id": self.id, "channels": self.channels, "kept": len(self.keep),
                "keep": list(self.keep), "status": self.status, "producers": list(self.producers),
                "members": list(self.members), "reasons": list(self.reasons), "scores": self.scores}

    @classmethod
    def from_dict(cls, d: dict) -> GroupPlan:
        return cls(id=d["id"], channels=int(d["channels"]), keep=[int(i) for i in d["keep"]],
                   status=d["status"], producers=list(d["producers"]),
                   members=list(d.get("members", [])), reasons=list(d.get("reasons", [])),
                   scores=d.get("scores"))


@dataclass
class PruningPlan:
    """Which channels every coupled group keeps.

    Attributes:
        model: the model's name.
        signature: hash of its layers and shapes (``DependencyGraph.signature``).
        spec: the ``PruneSpec`` the plan was made with.
        groups: one ``GroupPlan`` per coupled group.
        warnings: parts of the model left unpruned, and why.
    """

    model: str
    signature: str
    spec: PruneSpec
    groups: list
    warnings: list = field(default_factory=list)

    @property
    def pruned_groups(self) -> list:
        return [g for g in self.groups if g.status == "pruned"]

    def summary(self) -> dict:
        """Counts of groups and channels before and after."""
        return {"groups": len(self.groups), "pruned_groups": len(self.pruned_groups),
                "channels_before": sum(g.channels for g in self.groups),
                "channels_after": sum(len(g.keep) for g in self.groups)}

    def to_dict(self) -> dict:
        """A versioned envelope (``edgekit.envelope``): ``{"schema", "schema_version", ...}``."""
        return wrap(PLAN_TYPE, PLAN_VERSION, {
            "model": self.model, "signature": self.signature, "spec": self.spec.to_dict(),
            "summary": self.summary(), "groups": [g.to_dict() for g in self.groups],
            "warnings": list(self.warnings)})

    @classmethod
    def from_dict(cls, d: dict) -> PruningPlan:
        """Read an envelope written by ``to_dict`` (or the nested ``{"_type", "_version",
        "_data"}`` form earlier edgekits wrote).

        Raises:
            DocumentError: not a pruning plan, or a version this edgekit cannot read.
        """
        data = unwrap(d, PLAN_TYPE, {PLAN_VERSION: None}, aliases=(_OLD_TYPE,),
                      rerun="plan the model again")
        return cls(model=data["model"], signature=data["signature"],
                   spec=PruneSpec.from_dict(data["spec"]),
                   groups=[GroupPlan.from_dict(g) for g in data["groups"]],
                   warnings=list(data.get("warnings", [])))

    def save(self, path) -> Path:
        """Write the plan as JSON (atomically)."""
        from edgekit.fsutil import write_json_atomic

        write_json_atomic(Path(path), self.to_dict())
        return Path(path)

    @classmethod
    def load(cls, path) -> PruningPlan:
        """Read a plan saved with ``save``.

        Raises:
            InputError: missing or unreadable file, or not a plan.
        """
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as e:
            raise InputError(f"cannot read pruning plan {path}: {e}") from e


def plan_pruning(model, spec: PruneSpec | None = None, *, data=None) -> PruningPlan:
    """Decide which channels of each coupled group to keep.

    Args:
        model: a built Keras 3 Sequential or functional model.
        spec: the pruning options (default ``PruneSpec()``).
        data: ``(x, y)`` arrays (``y`` may be ``None``); needed by ``Criterion.TAYLOR``.

    Returns:
        The plan. Nothing in ``model`` changes.

    Raises:
        InputError: a subclassed model, a spec that cannot be met (``round_to`` larger than
            every prunable group, nothing left to prune), or Taylor without data.
    """
    spec = spec or PruneSpec()
    graph = DependencyGraph.build(model)
    grads = None
    if spec.criterion == Criterion.TAYLOR:
        if data is None:
            raise InputError("the taylor criterion needs data: pass training data (x and labels)")
        grads = taylor_gradients(model, data[0], data[1], batches=spec.taylor_batches)
    protected = _protected(graph, spec)
    plans, scores, notes = [], {}, []
    for g in graph.groups:
        status, reasons = "unchanged", list(g.reasons)
        if g.reasons:
            status = "blocked"
        elif g.id in protected:
            status, reasons = "protected", [protected[g.id]]
        elif g.size < spec.round_to:
            status = "blocked"
            reasons = [f"{g.size} channels, fewer than round_to={spec.round_to}"]
            notes.append(f"{g.id} ({', '.join(g.producers)}): {reasons[0]}; left unpruned")
        summary = None
        if status == "unchanged":
            s, used = group_scores(graph, g, spec.criterion, grads)
            scores[g.id] = s
            summary = {"criterion": used, "min": float(s.min()), "mean": float(s.mean()),
                       "max": float(s.max())}
        plans.append(GroupPlan(g.id, g.size, list(range(g.size)), status, list(g.producers),
                               g.members, reasons, summary))
    if not scores:
        raise InputError(_nothing_to_prune(graph, spec, plans))
    keep = _global_keep(spec, plans, scores) if spec.global_ranking else {
        p.id: spec.keep_count(p.channels, spec.ratio) for p in plans if p.id in scores}
    for p in plans:
        if p.id in scores:
            n = keep[p.id]
            p.keep = sorted(int(i) for i in np.argsort(-scores[p.id], kind="stable")[:n])
            p.status = "pruned" if n < p.channels else "unchanged"
    notes.extend(_boundary_notes(graph))
    for note in notes:
        warnings.warn(note, PruningWarning, stacklevel=2)
        log.info("pruning: %s", note)
    return PruningPlan(model.name, graph.signature(), spec, plans, notes)


def _protected(graph: DependencyGraph, spec: PruneSpec) -> dict:
    protected = {}
    free = [g for g in graph.groups if not g.reasons]
    if spec.protect_first_last and free:
        # The last layer's outputs are model outputs, which are never pruned anyway.
        protected[free[0].id] = "first layer's channels (protect_first_last)"
    unknown = [n for n in spec.protect if n not in graph.by_name]
    if unknown:
        raise InputError(f"protect names layers not in model {graph.model.name!r}: "
                         f"{', '.join(unknown)}")
    for g in graph.groups:
        # A layer's own channels: what it produces (or, per-channel layers, passes through),
        # not the channels it reads.
        hit = [m["layer"] for m in g.members
               if m["layer"] in spec.protect and m["role"] != "consumer"]
        if hit:
            protected[g.id] = f"protected layer {hit[0]!r}"
    return protected


def _global_keep(spec: PruneSpec, plans: list, scores: dict) -> dict:
    """Remove the lowest-scoring ``ratio`` of all scored channels, with a per-group floor."""
    sizes = {p.id: p.channels for p in plans if p.id in scores}
    floor = {gid: max(spec.min_channels, n - int(np.floor(n * spec.max_layer_ratio)))
             for gid, n in sizes.items()}
    left = dict(sizes)
    ranked = sorted((float(s), gid, i) for gid, arr in scores.items() for i, s in enumerate(arr))
    budget = round(spec.ratio * sum(sizes.values()))
    for _, gid, _ in ranked:
        if budget <= 0:
            break
        if left[gid] > floor[gid]:
            left[gid] -= 1
            budget -= 1
    out = {}
    for gid, n in left.items():
        r = spec.round_to
        out[gid] = n if r == 1 else min(sizes[gid], max(r, int(np.floor(n / r + 0.5)) * r))
    return out


def _boundary_notes(graph: DependencyGraph) -> list:
    """One warning per layer the pruner does not understand that stopped a group."""
    seen, notes = set(), []
    for g in graph.groups:
        for reason in g.reasons:
            boundary = any(k in reason for k in ("not understood", "shared by", "depth_multiplier",
                                                 "merges tensors", "other than channels"))
            if boundary and reason not in seen:
                seen.add(reason)
                notes.append(f"{reason} ({g.id} left unpruned)")
    return notes


def _nothing_to_prune(graph: DependencyGraph, spec: PruneSpec, plans: list) -> str:
    if not graph.groups:
        return (f"model {graph.model.name!r} has no Conv/Dense/SeparableConv layer whose output "
                f"channels could be pruned")
    small = [p for p in plans if p.reasons and "round_to" in p.reasons[0]]
    if small:
        return (f"round_to={spec.round_to} is larger than every prunable layer of "
                f"{graph.model.name!r} (largest: {max(p.channels for p in small)} channels); "
                f"use a smaller --round-to")
    lines = "; ".join(f"{p.id}: {p.reasons[0] if p.reasons else p.status}" for p in plans[:6])
    return f"nothing in {graph.model.name!r} can be pruned: {lines}"
