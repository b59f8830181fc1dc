"""The plan of a sweep: methods × budgets × seeds -> runs, and where each run lives.

The budget axis is each method's annotation (:func:`budget_key`): masks or boxes for the dense
methods, spurious-attribute labels for the methods that train on them (``groupdro`` on train,
``dfr`` on val); methods trained on image labels alone run once per seed.

A run is finished iff its folder holds ``report.json`` (written atomically, after everything
else the run needs), so any launcher, interrupted anywhere, leaves a folder that a re-run of
the sweep either skips or resumes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spatialspec.data.budget import parse_budget

#: ``budget`` of the methods without a budget axis (they run once per seed).
NO_BUDGET = "-"
#: Files of a run folder (besides the fit's own ``config.yaml``, ``run.json``, ``checkpoints/``).
REPORT = "report.json"
ERROR = "error.txt"
RUN_INFO = "sweep_run.json"
HEARTBEAT = "heartbeat.json"
SUBMITTED = "submitted.json"


@dataclass(frozen=True)
class SweepRun:
    """One cell of the grid.

    Attributes:
        method: Registered method name.
        budget: Canonical budget label (:func:`budget_label`), or :data:`NO_BUDGET` for a method
            that ignores masks and attributes. It is the method's mask budget, or its attribute
            budget for a method that trains on spurious attributes (:func:`budget_key`).
        seed: Training seed, also the seed of the budget's mask selection.
        specificity: Spatial specificity of the dense target (``data.specificity``, canonical
            name such as ``dilate:4``), or None for the method's own level (and for methods
            that ignore masks).
    """

    method: str
    budget: str
    seed: int
    specificity: str | None = None

    @property
    def uses_masks(self) -> bool:
        """Whether the run has a budget, of masks or of attributes (False for ``binary``)."""
        return self.budget != NO_BUDGET

    @property
    def name(self) -> str:
        """Run folder below ``DIR/runs``: ``seg/budget-10/seed-1``, ``binary/seed-1``, or with
        a specificity ``seg/budget-all/spec-dilate-4/seed-1``."""
        if not self.uses_masks:
            return f"{self.method}/seed-{self.seed}"
        spec = "" if self.specificity is None else f"spec-{self.specificity.replace(':', '-')}/"
        return f"{self.method}/budget-{self.budget}/{spec}seed-{self.seed}"


def budget_label(value: Any) -> str:
    """Canonical text of a budget: ``"all"``, a count (``"25"``) or a fraction (``"0.1"``).

    ``10%`` and ``0.1`` give the same label (and so the same run folder).

    Raises:
        ValueError: If :func:`~spatialspec.data.budget.parse_budget` rejects ``value``.
    """
    parsed = parse_budget(value)
    if parsed is None:
        return "all"
    return str(parsed)  # int -> "25"; float keeps its point -> "0.1", "1.0"


def items(values: str | Iterable[Any]) -> list[Any]:
    """A comma-separated string or an iterable as a list without blanks and duplicates."""
    if isinstance(values, str):
        values = values.split(",")
    out: list[Any] = []
    for value in values:
        value = value.strip() if isinstance(value, str) else value
        if value != "" and value not in out:
            out.append(value)
    return out


def _seeds(seeds: str | Iterable[Any]) -> list[int]:
    out: list[int] = []
    for seed in items(seeds):
        try:
            number = int(seed)
        except (TypeError, ValueError):
            raise ValueError(f"seeds must be integers, got {seed!r}") from None
        if number not in out:
            out.append(number)
    return out


def _own_level_only(method: str) -> bool:
    """Whether a method trains at one fixed specificity (``bbox``: boxes) or none (``binary``)."""
    from spatialspec.methods import METHODS

    return METHODS.get(method).annotation != "mask"


def budget_key(method: str) -> str | None:
    """The fit option a method's budget sets: ``data.mask_budget`` for a method trained on boxes
    or masks, ``data.attribute_budget`` for one trained on spurious attributes (its
    ``attribute_split`` is set: ``groupdro``, ``dfr``), None for one trained on image labels
    alone (``binary``, ``jtt``), which runs once per seed (KeyError lists valid names)."""
    from spatialspec.methods import METHODS

    cls = METHODS.get(method)
    if cls.annotation != "label":
        return "data.mask_budget"
    if getattr(cls, "attribute_split", None) is not None:
        return "data.attribute_budget"
    return None


def _ignores_masks(method: str) -> bool:
    """Whether a registered method has no budget axis (KeyError lists valid names)."""
    return budget_key(method) is None


def _specificities(values: str | Iterable[Any] | None) -> list[str | None]:
    if values is None or (isinstance(values, str) and not values.strip()):
        return [None]
    from spatialspec.data.specificity import parse_specificities

    listed = values if isinstance(values, str) else ",".join(str(v) for v in values)
    return list(dict.fromkeys(level.name for level in parse_specificities(listed)))


def plan(
    methods: str | Iterable[str],
    budgets: str | Iterable[Any],
    seeds: str | Iterable[Any],
    specificities: str | Iterable[Any] | None = None,
) -> list[SweepRun]:
    """The runs of a sweep, seed by seed (so an interrupted sweep has whole seeds done first).

    Args:
        methods: Registered method names (a list or ``"binary,seg"``).
        budgets: Budgets of masks, or of attributes for the methods trained on them (anything
            :func:`budget_label` accepts, or ``"0,25,all"``).
        seeds: Training seeds (ints or ``"1,2,3"``).
        specificities: Spatial specificity levels of the dense target (``"mask,dilate:4,box"``;
            :mod:`spatialspec.data.specificity`), a grid axis of the methods trained on masks
            (``bbox`` keeps its boxes, ``binary`` its labels); None: each method's own level.

    Returns:
        Methods without a budget axis once per seed; the others once per budget, specificity and
        seed.

    Raises:
        KeyError: An unknown method (the message lists the valid names).
        ValueError: A bad budget or seed, or an empty list.
    """
    names = items(methods)
    labels = list(dict.fromkeys(budget_label(b) for b in items(budgets)))
    seed_list = _seeds(seeds)
    levels = _specificities(specificities)
    for kind, values in (("methods", names), ("budgets", labels), ("seeds", seed_list)):
        if not values:
            raise ValueError(f"a sweep needs at least one of {kind}")
    once = {m: _ignores_masks(m) for m in names}
    fixed = {m: _own_level_only(m) for m in names}
    return [
        SweepRun(method, budget, seed, None if once[method] else level)
        for seed in seed_list
        for method in names
        for budget in ([NO_BUDGET] if once[method] else labels)
        for level in ([None] if fixed[method] else levels)
    ]


def run_dir_of(out: str | Path, run: SweepRun) -> Path:
    """``DIR/runs/<run.name>``."""
    return Path(out) / "runs" / run.name


def is_finished(out: str | Path, run: SweepRun) -> bool:
    """A run is finished iff its ``report.json`` exists."""
    return (run_dir_of(out, run) / REPORT).is_file()
