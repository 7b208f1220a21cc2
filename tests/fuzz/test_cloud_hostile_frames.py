"""Fixed reproducers of what fuzzing the cloud's stream found (docs/DESIGN.md §7.1).

Each case is a frame that the protocol layer accepts — it decodes, its shapes match the cut
layer, its floats are finite — but whose content the training code must still refuse or
survive: labels outside the model's classes, activations of a dtype the cloud stage cannot
take, finite values that overflow once computed with or cast to float32, a configuration
value of the wrong kind. The oracles are the fuzz campaign's (``fuzz_cloud.judge``): no
exception escapes the endpoint, a refusal carries a protocol close code (never 1011) and
leaves the master bit-identical, and the master stays finite.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from fuzz_cloud import Cloud, Session, drive, judge, running_cloud

from simultrain.shared.protocol import Act, EGrad, Hello, WireTensor, encode_frame


def _hello(cloud: Cloud, **config: object) -> bytes:
    service = cloud.service
    return encode_frame(
        Hello(
            edge_id="hostile-edge",
            model_id=service.spec.model_id,
            cut_shape=tuple(service.cut_shape),
            config=config,  # type: ignore[arg-type]
        )
    )


def _act(cloud: Cloud, activations: np.ndarray, labels: np.ndarray) -> bytes:
    return encode_frame(
        Act(seq=0, edge_version=0, activations=WireTensor(activations), labels=WireTensor(labels))
    )


def _cut(cloud: Cloud, dtype: str, value: float = 0.5, batch: int = 2) -> np.ndarray:
    return np.full((batch, *cloud.service.cut_shape), value, dtype=dtype)


def _labels(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def _egrad(cloud: Cloud, value: float, dtype: str) -> bytes:
    weights = cloud.service.master.edge_weights()
    grads = {
        name: WireTensor(np.full(tuple(t.shape), value, dtype=dtype)) for name, t in weights.items()
    }
    return encode_frame(EGrad(seq=0, edge_version=cloud.service.master.version, grads=grads))


def _act_carrying_egrad(cloud: Cloud, activations: np.ndarray, labels: np.ndarray) -> bytes:
    """An ACT for batch 1 with a valid EGRAD for batch 0 piggybacked (docs/DESIGN.md §3.7)."""
    weights = cloud.service.master.edge_weights()
    egrad = EGrad(
        seq=0,
        edge_version=cloud.service.master.version,
        grads={n: WireTensor(np.full(tuple(t.shape), 0.01, "float32")) for n, t in weights.items()},
    )
    return encode_frame(
        Act(
            seq=1,
            edge_version=0,
            activations=WireTensor(activations),
            labels=WireTensor(labels),
            egrad=egrad,
        )
    )


CASES = {
    # cross_entropy raises IndexError on a class index outside [0, num_classes).
    "labels above the classes": lambda c: [_hello(c), _act(c, _cut(c, "float32"), _labels(1, 99))],
    "negative labels": lambda c: [_hello(c), _act(c, _cut(c, "float32"), _labels(-3, 1))],
    # The cloud stage is float32; other dtypes fail inside torch.
    "uint8 activations": lambda c: [_hello(c), _act(c, _cut(c, "uint8", 3), _labels(0, 1))],
    "int64 activations": lambda c: [_hello(c), _act(c, _cut(c, "int64", 3), _labels(0, 1))],
    "float64 activations": lambda c: [_hello(c), _act(c, _cut(c, "float64"), _labels(0, 1))],
    # Finite, but the forward pass overflows: loss and gradients become NaN.
    "huge finite activations": lambda c: [
        _hello(c),
        _act(c, _cut(c, "float32", 3e38), _labels(0, 1)),
    ],
    # Finite float64 gradients that become infinite when cast to the float32 weights.
    "float64 gradient overflowing float32": lambda c: [_hello(c), _egrad(c, 1e300, "float64")],
    # A valid EGRAD riding on an ACT that must be refused: the whole frame is refused and the
    # EGRAD must not land either (found by `make fuzz`, seed 2811336909, message 5025).
    "valid EGRAD on an ACT of uint8 activations": lambda c: [
        _hello(c),
        _act_carrying_egrad(c, _cut(c, "uint8", 3), _labels(0, 1)),
    ],
    "valid EGRAD on an ACT that overflows": lambda c: [
        _hello(c),
        _act_carrying_egrad(c, _cut(c, "float32", 3e38), _labels(0, 1)),
    ],
    "valid EGRAD on an ACT with labels above the classes": lambda c: [
        _hello(c),
        _act_carrying_egrad(c, _cut(c, "float32"), _labels(0, 99)),
    ],
    # A configuration value of the wrong kind in HELLO (the cloud reads reconcile_offset).
    "reconcile_offset is text": lambda c: [_hello(c, reconcile_offset="soon")],
    "reconcile_offset is infinite": lambda c: [_hello(c, reconcile_offset=math.inf)],
}


@pytest.mark.parametrize("case", list(CASES))
async def test_cloud_survives_a_decodable_but_unusable_frame(case: str) -> None:
    failures: list[str] = []

    def check(oracle: str, signature: str, detail: str, trace: str = "") -> None:
        failures.append(f"[{oracle}] {detail}\n{trace}")

    async with running_cloud() as cloud:
        session = Session(case, CASES[case](cloud))
        await drive(cloud, session)
        judge(session, cloud.service.limits, check)
        if not bool(torch.isfinite(cloud.master_state()[1]).all()):
            failures.append("[corrupted master] the master is no longer finite")
    assert not failures, "\n".join(failures)
