"""The run configuration: one immutable object shared by the driver, the services and the CLI.

The coordinator hands it to every edge and cloud as a flat JSON map (:meth:`RunConfig.to_mapping`)
so every participant of a run trains the same schedule on the same model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, cast, get_args, get_origin, get_type_hints

from simultrain.shared.data.dataset import PARTITIONS
from simultrain.shared.errors import ConfigError
from simultrain.shared.training.compensation import compensation_from_name
from simultrain.shared.training.gradcoding import GradientCode
from simultrain.shared.training.master import OptimizerConfig
from simultrain.shared.training.runtime import Codecs
from simultrain.shared.training.schedule import Schedule, check_gradient_coding, make_schedule

__all__ = ["DRIVER_ONLY", "RunConfig"]

DRIVER_ONLY = frozenset({"steps", "eval_every", "delta_loss"})


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run; the services take the same fields from the coordinator."""

    mode: str = "simultrain"
    dataset: str = "imu"
    model_id: str | None = None
    steps: int = 1500  # batches per edge
    edges: int = 1
    batch_size: int = 32
    seed: int = 0
    # How the training data is dealt to the edges (`Dataset.shard`): the edges and the
    # in-process driver shard with this same value, so both train on the same split.
    partition: str = "auto"
    window: int = 4
    # The forecast's α (SPEC step 4). None: not given, so a ``forecast`` part in the chain
    # keeps its own (0.5, the paper's); given for a chain without one, it is refused.
    alpha: float | None = None
    beta: float = 0.9
    reconcile_every: int | None = 10
    local_steps: int = 5
    # Stragglers in lockstep rounds (FedAvg): close a round this many seconds after it started
    # with the uploads that arrived (partial aggregation); None waits for every edge.
    round_deadline_s: float | None = None
    # Gradient coding against stragglers (seed 004; Tandon et al. 2017), syncsgd only: the
    # number s of straggling edges a round tolerates, 0 = off. Edge i of ``edges`` holds the
    # s + 1 partitions the cyclic code assigns it and uploads one coded gradient; the cloud
    # decodes the full gradient from the first ``edges − s`` of a round (docs/BENCH.md).
    gradient_coding_s: int = 0
    # Staleness compensation, a chain of parts joined by '+' (shared/training/compensation.py,
    # e.g. ``delay-beta1+forecast``), chosen by the staleness study (docs/STALENESS.md):
    # Adam's β₁ on the cloud stage lowered with the staleness; SGD left alone
    # (``delay-momentum`` opts it in). The plain update at staleness 0, so lockstep modes are
    # unaffected. The paper's SimulTrain is ``forecast`` (α 0.5).
    compensation: str = "delay-beta1"
    # Adam with the study's default compensation keeps window 4 at parity with window 0 on
    # both datasets (docs/STALENESS.md); plain SGD at lr 0.05 barely moves MNIST in 600
    # steps. Every mode uses this one optimizer family (SPEC: no strawmen).
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig("adam", lr=1e-3))
    codecs: Codecs = field(default_factory=Codecs)
    eval_every: int = 0  # steps between held-out evaluations (0: only at the end)
    # In-process fault injection for the R = ∞ ablation: each additive (lossy-codec) delta is
    # lost with this probability; the edge's version still advances, its weights do not.
    delta_loss: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.optimizer, OptimizerConfig) or not isinstance(self.codecs, Codecs):
            raise ConfigError("run configuration: optimizer and codecs must be their own types")
        _check_types(self, "")
        _check_types(self.optimizer, "optimizer")
        _check_types(self.codecs, "codecs")
        for key, low in (("steps", 0), ("edges", 1), ("batch_size", 1), ("local_steps", 1)):
            if getattr(self, key) < low:
                raise ConfigError(f"run configuration {key!r}: must be ≥ {low}")
        if not 0.0 <= self.delta_loss <= 1.0:
            raise ConfigError("run configuration 'delta_loss': must be in [0, 1]")
        if self.partition not in PARTITIONS:
            raise ConfigError(
                f"run configuration 'partition': {self.partition!r} is not one of "
                f"{', '.join(PARTITIONS)}"
            )
        schedule = self.schedule()  # mode, window, β, R, and α against the chain
        check_gradient_coding(
            schedule,
            self.gradient_coding_s,
            edges=self.edges,
            round_deadline_s=self.round_deadline_s,
        )
        compensation_from_name(schedule.compensation, alpha=schedule.alpha)  # every part's name

    def gradient_code(self) -> GradientCode | None:
        """The run's gradient code (seed 004), or None when coding is off. Every edge and the
        cloud build it from the same three numbers, so they hold the same ``B``."""
        if not self.gradient_coding_s:
            return None
        return GradientCode.cyclic(self.edges, self.gradient_coding_s, seed=self.seed)

    def schedule(self) -> Schedule:
        """The mode's schedule with this run's compensation chain and α (SPEC "Ablations")."""
        return make_schedule(
            self.mode,
            window=self.window,
            alpha=self.alpha,
            reconcile_every=self.reconcile_every,
            beta=self.beta,
            local_steps=self.local_steps,
            compensation=self.compensation,
        )

    def to_mapping(self, *, driver: bool = False) -> dict[str, Any]:
        """Flat, JSON-friendly form: optimizer and codec fields are prefixed.

        The in-process driver's own fields (``steps``, ``eval_every``, ``delta_loss``) are
        left out unless ``driver``: in the services each edge decides how long it trains,
        and faults are real.
        """
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in DRIVER_ONLY and not driver:
                continue
            value = getattr(self, f.name)
            if f.name == "optimizer":
                out.update({f"optimizer_{k.name}": getattr(value, k.name) for k in fields(value)})
            elif f.name == "codecs":
                out.update(
                    {
                        f"{k.name}_codec" if k.name != "topk_ratio" else "topk_ratio": getattr(
                            value, k.name
                        )
                        for k in fields(value)
                    }
                )
            else:
                out[f.name] = value
        return out

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, base: RunConfig | None = None) -> RunConfig:
        """Build from :meth:`to_mapping`'s form over ``base`` (default: the defaults).

        Every key must be one of `RunConfig.keys` and every value of that key's type
        (an int where a float is due is taken): anything else is a `ConfigError` naming the
        key — a misspelt key silently ignored would train something else than asked.
        """
        base = base or cls()
        flat = base.to_mapping(driver=True)
        unknown = sorted(str(k) for k in data if k not in flat)
        if unknown:
            raise ConfigError(
                f"unknown run configuration key(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(sorted(flat))}"
            )
        top: dict[str, Any] = {}
        opt: dict[str, Any] = {}
        codecs: dict[str, Any] = {}
        for key, value in data.items():
            if key.startswith("optimizer_"):
                opt[key.removeprefix("optimizer_")] = value
            elif key in _CODEC_KEYS:
                codecs[_CODEC_KEYS[key]] = value
            else:
                top[key] = value
        if top.get("reconcile_every") == 0:
            top["reconcile_every"] = None  # 0 = never, as on the command line
        return replace(
            base,
            **top,
            optimizer=replace(base.optimizer, **opt),
            codecs=replace(base.codecs, **codecs),
        )

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> RunConfig:
        """The run a service's ``run_*`` settings describe (used without a coordinator).

        ``settings`` is the service's settings as a mapping; each ``run_KEY`` is the key
        ``KEY`` (``run_optimizer``, ``run_lr`` and ``run_momentum`` are the optimizer's), so
        the cloud's and the edge's settings carry no run configuration of their own.
        """
        mapping = {}
        for name, value in settings.items():
            if name.startswith("run_"):
                key = name.removeprefix("run_")
                mapping[_SETTINGS_KEYS.get(key, key)] = value
        return cls.from_mapping(mapping)

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """Every key `from_mapping` takes, in `to_mapping`'s order."""
        return tuple(cls().to_mapping(driver=True))


# Short names the services' ``run_*`` settings use for optimizer keys.
_SETTINGS_KEYS = {
    "optimizer": "optimizer_name",
    "lr": "optimizer_lr",
    "momentum": "optimizer_momentum",
}

_CODEC_KEYS = {
    ("topk_ratio" if f.name == "topk_ratio" else f"{f.name}_codec"): f.name for f in fields(Codecs)
}


def _check_types(owner: object, prefix: str) -> None:
    """Refuse a value of the wrong type, naming its flat key; ints become floats where due."""
    hints = get_type_hints(type(owner))
    for f in fields(cast(Any, owner)):
        if f.name in ("optimizer", "codecs"):
            continue
        key = _flat_key(prefix, f.name)
        value = getattr(owner, f.name)
        hint = hints[f.name]
        args = get_args(hint)
        optional = type(None) in args
        if value is None:
            if not optional:
                raise ConfigError(f"run configuration {key!r}: must not be null")
            continue
        kinds = {a for a in args if a is not type(None)} or {hint}
        if get_origin(hint) is Literal:
            if value not in args:
                raise ConfigError(
                    f"run configuration {key!r}: {value!r} is not one of "
                    f"{', '.join(map(repr, args))}"
                )
            continue
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
            object.__setattr__(owner, f.name, value)
        ok = any(
            isinstance(value, kind) and not (kind is int and isinstance(value, bool))
            for kind in kinds
            if isinstance(kind, type)
        )
        if not ok or (isinstance(value, float) and not math.isfinite(value)):
            wanted = " or ".join(
                getattr(k, "__name__", str(k)) for k in (*kinds, *([None] if optional else []))
            )
            raise ConfigError(
                f"run configuration {key!r}: expected {wanted}, got {type(value).__name__} "
                f"{value!r}"
            )


def _flat_key(prefix: str, name: str) -> str:
    if prefix == "optimizer":
        return f"optimizer_{name}"
    if prefix == "codecs":
        return name if name == "topk_ratio" else f"{name}_codec"
    return name
