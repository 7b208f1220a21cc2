"""The run configuration: one immutable object shared by the driver, the services and the CLI.

The coordinator hands it to every edge and cloud as a flat JSON map (:meth:`RunConfig.to_mapping`)
so every participant of a run trains the same schedule on the same model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from simultrain.shared.errors import ConfigError
from simultrain.shared.training.master import OptimizerConfig
from simultrain.shared.training.runtime import Codecs
from simultrain.shared.training.schedule import Schedule, make_schedule

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
    alpha: float = 0.5
    beta: float = 0.9
    reconcile_every: int | None = 10
    local_steps: int = 5
    # Staleness compensation (shared/training/compensation.py), chosen by the staleness study
    # (docs/STALENESS.md): Adam's β₁ on the cloud stage lowered with the staleness; SGD left
    # alone (``delay-momentum`` opts it in). The plain update at staleness 0, so lockstep
    # modes are unaffected.
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

    def schedule(self) -> Schedule:
        base = make_schedule(
            self.mode,
            window=self.window,
            alpha=self.alpha,
            reconcile_every=self.reconcile_every,
            beta=self.beta,
            local_steps=self.local_steps,
        )
        if base.compensation == "none":
            return base
        return replace(base, compensation=self.compensation)

    def to_mapping(self) -> dict[str, Any]:
        """Flat, JSON-friendly form: optimizer and codec fields are prefixed.

        The in-process driver's own fields (``steps``, ``eval_every``, ``delta_loss``) are
        left out: in the services each edge decides how long it trains, and faults are real.
        """
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in DRIVER_ONLY:
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
        """Build from :meth:`to_mapping`'s form; unknown keys are ignored, wrong types refused."""
        base = base or cls()
        top: dict[str, Any] = {}
        opt: dict[str, Any] = {}
        codecs: dict[str, Any] = {}
        codec_names = {f"{k.name}_codec": k.name for k in fields(Codecs) if k.name != "topk_ratio"}
        for key, value in data.items():
            if key.startswith("optimizer_"):
                opt[key.removeprefix("optimizer_")] = value
            elif key in codec_names:
                codecs[codec_names[key]] = value
            elif key == "topk_ratio":
                codecs["topk_ratio"] = value
            elif key in {f.name for f in fields(cls)} and key not in ("optimizer", "codecs"):
                top[key] = value
        try:
            return replace(
                base,
                **top,
                optimizer=replace(base.optimizer, **opt),
                codecs=replace(base.codecs, **codecs),
            )
        except TypeError as exc:
            raise ConfigError(f"invalid run configuration: {exc}") from exc
