"""The run configuration: one immutable object shared by the driver, the services and the CLI.

The coordinator hands it to every edge and cloud as a flat JSON map (:meth:`RunConfig.to_mapping`)
so every participant of a run trains the same schedule on the same model. Each participant
builds what it trains from it in one place, shared/training/assembly.py. Validating a
configuration (the coordinator does, for every run it is given) imports no torch: this
module and the ones it reads (keys, options, schedule, compensation) do not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from typing import Annotated, Any, Literal, Self, get_type_hints

from simultrain.shared.errors import ConfigError
from simultrain.shared.training.compensation import parse_compensation
from simultrain.shared.training.fleet import Credits, Mixing, check_fleet_keys
from simultrain.shared.training.keys import Key, RunKey
from simultrain.shared.training.options import Codecs, OptimizerConfig
from simultrain.shared.training.schedule import MODES, Schedule, make_schedule

__all__ = ["AUTO_FALLBACK_WINDOW", "DRIVER_ONLY", "Key", "RunConfig", "RunKey"]

# The in-process driver's own keys: a service is never handed one.
DRIVER_ONLY = frozenset({"steps", "eval_every", "delta_loss"})

# What ``window = auto`` runs where no credits size the window: an edge that does not speak
# capability ``credits``, and the in-process driver without ``fleet_in_flight`` (it has no
# clock to measure a pipe with). The explicit default before ``auto`` existed, so an ``auto``
# run in process is bit for bit a window-4 run (tests/core/golden_runs.py).
AUTO_FALLBACK_WINDOW = 4

# Dataset.shard's PARTITIONS (shared/data/dataset.py; a test holds the two equal), spelt here
# so that validating a configuration does not load the data modules (and torch with them).
_PARTITIONS = ("auto", "groups", "iid", "label-skew")


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run; the services take the same fields from the coordinator.

    Each field is declared once, here (and in `OptimizerConfig` and `Codecs` for the flat
    ``optimizer_*`` and ``*_codec`` keys): its type, default, bounds and one-line meaning (`Key`).
    The coordinator's API schema, the services' run settings (``SIMULTRAIN_COORDINATOR_<KEY>``,
    ``SIMULTRAIN_CLOUD_RUN_<KEY>``, …) and docs/CONFIGURATION.md's configuration table are all read
    from `RunConfig.declaration`.
    """

    mode: Annotated[
        str, Key("Training mode: simultrain, a baseline or an ablation.", choices=tuple(MODES))
    ] = "simultrain"
    dataset: Annotated[
        str,
        Key(
            "Dataset: imu, mnist, video or npz:PATH.",
            nonempty=True,
            inert="the participant loads the data (load_dataset; a cloud may evaluate on its "
            "own eval_dataset) and hands the builders its model spec and data",
        ),
    ] = "imu"
    model_id: Annotated[
        str | None,
        Key(
            "Model id (default: the dataset's own model).",
            nonempty=True,
            inert="names the model spec the participant reads from its data set "
            "(Dataset.model_spec) and hands the builders",
        ),
    ] = None
    steps: Annotated[
        int,
        Key(
            "Batches per edge (the in-process driver's).",
            ge=0,
            inert="the in-process driver's loop length; a service edge trains until its own "
            "steps setting or until it is stopped",
        ),
    ] = 1500
    edges: Annotated[int, Key("Edges expected in the run (sizes the history).", ge=1)] = 1
    batch_size: Annotated[int, Key("Samples per edge batch.", ge=1)] = 32
    seed: Annotated[int, Key("Seed for data order and model initialisation.")] = 0
    # How the training data is dealt to the edges (`Dataset.shard`): the edges and the
    # in-process driver shard with this same value, so both train on the same split.
    partition: Annotated[
        str,
        Key(
            "How training data is dealt to edges: auto, groups (one subject per edge), iid "
            "or label-skew (Dataset.shard).",
            choices=_PARTITIONS,
        ),
    ] = "auto"
    # An explicit W bounds each edge's batches in flight (0 and 1: lockstep); ``auto`` lets the
    # cloud's credits size them (docs/FLEET.md, "Credits"): through the services an edge that
    # speaks capability ``credits`` keeps to its grant with no cap of its own, any other edge
    # and the in-process driver run AUTO_FALLBACK_WINDOW (docs/CONFIGURATION.md).
    window: Annotated[
        int | Literal["auto"],
        Key(
            "In-flight window τ_max (staleness bound) per edge; auto: the cloud's credits "
            f"size it (an edge without them, and the in-process driver: {AUTO_FALLBACK_WINDOW}).",
            ge=0,
        ),
    ] = "auto"
    # The forecast's α (docs/DESIGN.md §6.4). None: not given, so a ``forecast`` part in the chain
    # keeps its own (0.5, the paper's); given for a chain without one, it is refused.
    alpha: Annotated[
        float | None,
        Key("Forecast coefficient α; only with a forecast part (default: its own 0.5).", ge=0),
    ] = None
    beta: Annotated[float, Key("Soft-reconciliation weight β.", ge=0, le=1)] = 0.9
    reconcile_every: Annotated[
        int | None,
        Key("Reconcile each edge every R of its steps; 0 or null = never (R = ∞).", ge=0),
    ] = 10
    local_steps: Annotated[int, Key("FedAvg's local steps E.", ge=1)] = 5
    # Stragglers in lockstep rounds (FedAvg): close a round this many seconds after it started
    # with the uploads that arrived (partial aggregation); None waits for every edge.
    round_deadline_s: Annotated[
        float | None,
        Key(
            "Lockstep (fedavg, syncsgd) rounds: seconds after which a round closes with the "
            "uploads that arrived (partial aggregation); unset waits for every edge.",
            gt=0,
        ),
    ] = None
    # Gradient coding against stragglers (Tandon et al. 2017; docs/DESIGN.md §5.3), syncsgd only:
    # the number s of straggling edges a round tolerates, 0 = off. Edge i of ``edges`` holds
    # the s + 1 partitions the cyclic code assigns it and uploads one coded gradient; the cloud
    # decodes the full gradient from the first ``edges − s`` of a round (docs/BENCH.md).
    gradient_coding_s: Annotated[
        int,
        Key(
            "syncsgd: stragglers a gradient-coded round tolerates, 0 = off; edge i "
            "then holds shards i … i + s (mod edges) and needs edges > s.",
            ge=0,
        ),
    ] = 0
    # Staleness compensation, a chain of parts joined by '+' (shared/training/compensation.py,
    # e.g. ``delay-beta1+forecast``), chosen by the staleness study (docs/STALENESS.md):
    # Adam's β₁ on the cloud stage lowered with the staleness; SGD left alone
    # (``delay-momentum`` opts it in). The plain update at staleness 0, so lockstep modes are
    # unaffected. The paper's SimulTrain is ``forecast`` (α 0.5).
    compensation: Annotated[
        str, Key("Staleness compensation chain, e.g. delay-beta1+forecast.")
    ] = "delay-beta1"
    # Adam with the study's default compensation keeps window 4 at parity with window 0 on
    # both datasets (docs/STALENESS.md); plain SGD at lr 0.05 barely moves MNIST in 600
    # steps. Every mode uses this one optimizer family (docs/DESIGN.md §10: no strawmen).
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig("adam", lr=1e-3))
    codecs: Codecs = field(default_factory=Codecs)
    eval_every: Annotated[
        int,
        Key(
            "Steps between held-out evaluations (0: only at the end).",
            ge=0,
            inert="the in-process driver's evaluation interval; a cloud evaluates when "
            "asked (GET /v1/eval)",
        ),
    ] = 0
    # In-process fault injection for the R = ∞ ablation: each additive (lossy-codec) delta is
    # lost with this probability; the edge's version still advances, its weights do not.
    # Lost silently: the edges of such a run do not check their replica's checksum.
    delta_loss: Annotated[
        float, Key("Probability that a lossy-codec delta is lost (driver only).", ge=0, le=1)
    ] = 0.0

    # --- the cloud schedules the fleet (docs/FLEET.md) ---------------------------------------
    # The reference every fleet result is measured against: centralized training on one seeded
    # shuffle of all the fleet's training data (shared/training/pooled.py).
    pooled: Annotated[
        bool,
        Key(
            "centralized: one edge trains on one seeded shuffle of all the fleet's data "
            "(the union of the edges' shards), steps × edges batches: the fleet's reference."
        ),
    ] = False
    # Mixed-edge cloud steps (shared/training/mixing.py): one cloud-stage step on the ACTs of
    # several edges, each edge getting its slice of the cut gradient.
    mix_edges: Annotated[
        int, Key("Edges whose batches one cloud-stage step mixes (1: one edge per step).", ge=1)
    ] = 1
    mix_batch: Annotated[
        Literal["split", "stack"],
        Key(
            "How a mixed step keeps its size: split (each edge sends batch_size / mix_edges "
            "samples) or stack (mix_edges × batch_size, learning rate by mix_lr)."
        ),
    ] = "split"
    mix_lr: Annotated[
        Literal["auto", "sqrt", "linear", "none"],
        Key("stack: learning-rate rule for the larger step (auto: sqrt for Adam, linear SGD)."),
    ] = "auto"
    mix_wait_s: Annotated[
        float,
        Key("Longest a mixed step waits for more edges (in process: 1 ms per message).", gt=0),
    ] = 0.05
    # Flow control (shared/training/flow.py): a fixed total of batches in flight across the
    # whole fleet, shared by the edges as credits (in process, and granted by the cloud service
    # to the edges that speak capability `credits`, PROTOCOL.md §6.7); an explicit window stays
    # each edge's cap. Unset: `window = auto` has the cloud's controller size the total.
    fleet_in_flight: Annotated[
        int | None,
        Key(
            "Batches in flight across the fleet, a fixed grant of credits; unset: the "
            "controller's with window auto, else each edge's window.",
            ge=1,
        ),
    ] = None
    # The cloud service holds back the ACKs of an edge that runs ahead (services/cloud/flow.py,
    # `Pacer`): the in-process driver takes the edges in turn, so its edges never drift apart.
    pace_lead: Annotated[
        int | Literal["off"],
        Key(
            "Batches an edge may be acknowledged ahead of the fleet's slowest edge in session "
            "before the cloud holds its ACKs (docs/FLEET.md, 'Pacing'); off: never. Lockstep "
            "modes keep their edges in step already.",
            ge=0,
        ),
    ] = 2
    # SplitFed-style per-edge edge stages (shared/training/edge_copies.py).
    edge_copies: Annotated[
        bool,
        Key(
            "One edge-stage copy per edge in the cloud, stepped at once with that edge's "
            "gradients and averaged at each reconciliation (SplitFed)."
        ),
    ] = False

    def __post_init__(self) -> None:
        if not isinstance(self.optimizer, OptimizerConfig) or not isinstance(self.codecs, Codecs):
            raise ConfigError("run configuration: optimizer and codecs must be their own types")
        # Every flat key against its declaration (ints become floats where due), then the
        # keys together: mode, gradient coding, and α against the compensation chain.
        for owner_name, name, key in _declared(type(self)):
            owner = self if owner_name is None else getattr(self, owner_name)
            value = getattr(owner, name)
            checked = key.check(value)
            if checked is not value:
                object.__setattr__(owner, name, checked)
        schedule = self.schedule()
        compensation = parse_compensation(schedule.compensation, alpha=schedule.alpha)
        check_fleet_keys(
            pooled=self.pooled,
            mixing=self.mixing(),
            edge_copies=self.edge_copies,
            fleet_in_flight=self.fleet_in_flight,
            batch_size=self.batch_size,
            edges=self.edges,
            schedule=schedule,
            compensation=compensation,
        )

    def mixing(self) -> Mixing:
        """How the cloud mixes edges into its steps (``mix_*``; one edge per step: 1)."""
        return Mixing(self.mix_edges, self.mix_batch, self.mix_lr, self.mix_wait_s)

    @property
    def window_cap(self) -> int | None:
        """Each edge's explicit bound on batches in flight: ``max(W, 1)``; None for ``auto``."""
        return None if self.window == "auto" else max(self.window, 1)

    @property
    def fixed_window(self) -> int:
        """The window of a participant that no credits size: W, or for ``auto``
        AUTO_FALLBACK_WINDOW (the schedule's ``window``)."""
        return AUTO_FALLBACK_WINDOW if self.window == "auto" else self.window

    @property
    def grants_credits(self) -> bool:
        """Whether a cloud of this run grants capability ``credits`` (PROTOCOL.md §6.7):
        ``window = auto`` (its flow controller sizes the grants) or ``fleet_in_flight`` set
        (a fixed fleet-wide total)."""
        return self.window == "auto" or self.fleet_in_flight is not None

    def credits(self) -> Credits | None:
        """The fleet's fixed in-flight grant (``fleet_in_flight``), None without one."""
        if self.fleet_in_flight is None:
            return None
        cap = self.window_cap
        return Credits(self.fleet_in_flight, self.fleet_in_flight if cap is None else cap)

    def schedule(self) -> Schedule:
        """The mode's schedule with this run's values (`make_schedule`)."""
        return make_schedule(self)

    def to_mapping(self, *, driver: bool = False) -> dict[str, Any]:
        """Flat, JSON-friendly form: optimizer and codec fields are prefixed.

        The in-process driver's own fields (``steps``, ``eval_every``, ``delta_loss``) are
        left out unless ``driver``: in the services each edge decides how long it trains,
        and faults are real.
        """
        return {
            key.name: getattr(self if owner is None else getattr(self, owner), name)
            for owner, name, key in _declared(type(self))
            if driver or key.name not in DRIVER_ONLY
        }

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], *, base: RunConfig | None = None, driver: bool = True
    ) -> Self:
        """Build from :meth:`to_mapping`'s form over ``base`` (default: the defaults).

        Every key must be one of `RunConfig.keys` (without the driver's own unless
        ``driver``) and every value of that key's declared type and bounds (an int where a
        float is due is taken): anything else is a `ConfigError` naming the key — a misspelt
        key silently ignored would train something else than asked.
        """
        if base is not None and not isinstance(base, cls):
            raise ConfigError(f"run configuration: base must be a {cls.__name__}")
        start = base if base is not None else cls()
        where = {key.name: (owner, name) for owner, name, key in _declared(cls)}
        known = cls.keys(driver=driver)
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise ConfigError(
                f"unknown run configuration key(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(sorted(known))}"
            )
        top: dict[str, Any] = {}
        nested: dict[str, dict[str, Any]] = {}
        for key, value in data.items():
            owner, name = where[key]
            if owner is None:
                top[name] = value
            else:
                nested.setdefault(owner, {})[name] = value
        if type(top.get("reconcile_every")) is int and top["reconcile_every"] == 0:
            top["reconcile_every"] = None  # 0 = never, as on the command line
        for owner, changes in nested.items():
            top[owner] = replace(getattr(start, owner), **changes)
        return replace(start, **top)

    @classmethod
    def from_strings(
        cls, texts: Mapping[str, str], *, base: RunConfig | None = None, driver: bool = True
    ) -> Self:
        """Like `from_mapping`, each value given as text (an environment variable) and read
        by its key's declared type (`RunKey.parse`); an optional key's ``""`` is None."""
        declared = {key.name: key for key in cls.declaration(driver=driver)}
        values = {
            name: declared[name].parse(text) if name in declared else text
            for name, text in texts.items()
        }
        return cls.from_mapping(values, base=base, driver=driver)

    def to_strings(self, *, driver: bool = False) -> dict[str, str]:
        """`to_mapping` as text that `from_strings` reads back (None is ``""``): the
        coordinator's ``SIMULTRAIN_COORDINATOR_<KEY>`` environment variables."""
        return {
            key: "" if value is None else str(value)
            for key, value in self.to_mapping(driver=driver).items()
        }

    @classmethod
    def declaration(cls, *, driver: bool = True) -> tuple[RunKey, ...]:
        """Every flat key as declared — name, type, default, bounds, meaning — in
        `to_mapping`'s order; without the driver's own keys unless ``driver``."""
        return tuple(key for _, _, key in _declared(cls) if driver or key.name not in DRIVER_ONLY)

    @classmethod
    def keys(cls, *, driver: bool = True) -> tuple[str, ...]:
        """Every key `from_mapping` takes, in `to_mapping`'s order."""
        return tuple(key.name for key in cls.declaration(driver=driver))

    @classmethod
    def json_schema(cls, *, driver: bool = False) -> dict[str, Any]:
        """The flat form as a JSON schema object (the coordinator's API documents it)."""
        declared = cls.declaration(driver=driver)
        return {
            "type": "object",
            "title": cls.__name__,
            "description": "The run configuration every edge and cloud trains with (flat "
            "keys; unknown keys are refused).",
            "properties": {key.name: key.json_schema() for key in declared},
            "additionalProperties": False,
        }


_Declared = tuple[tuple[str | None, str, RunKey], ...]
_DECLARED: dict[type[RunConfig], _Declared] = {}


def _declared(cls: type[RunConfig]) -> _Declared:
    """(nested field or None, field name, flat key) for every field, in declaration order.

    The optimizer's and the codecs' fields are flat keys too (``optimizer_lr``,
    ``act_codec``), their defaults `RunConfig`'s own.
    """
    if cls in _DECLARED:
        return _DECLARED[cls]
    out: list[tuple[str | None, str, RunKey]] = []
    hints = get_type_hints(cls, include_extras=True)
    for f in fields(cls):
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            raise TypeError(f"run configuration field {f.name!r} has no default")
        if is_dataclass(default):
            inner = get_type_hints(type(default), include_extras=True)
            for g in fields(default):
                flat = _flat_key(f.name, g.name)
                out.append(
                    (
                        f.name,
                        g.name,
                        RunKey.from_hint(flat, inner[g.name], getattr(default, g.name)),
                    )
                )
        else:
            out.append((None, f.name, RunKey.from_hint(f.name, hints[f.name], default)))
    _DECLARED[cls] = tuple(out)
    return _DECLARED[cls]


def _flat_key(prefix: str, name: str) -> str:
    if prefix == "optimizer":
        return f"optimizer_{name}"
    if prefix == "codecs":
        return name if name == "topk_ratio" else f"{name}_codec"
    return name
