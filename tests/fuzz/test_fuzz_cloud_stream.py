"""Fuzzing the cloud's ``WS /v1/stream`` endpoint with hostile sessions (docs/DESIGN.md §7.1).

Each session is one hostile message (``fuzz_frames.hostile_message``) in one of three places:

- ``first``: it is the session's first message (mostly a mutated HELLO);
- ``open``: after a valid HELLO and the cloud's WELCOME and SNAP;
- ``after_act``: after a valid ACT too, so a mutated EGRAD or ACT meets a batch in flight.

The cloud runs in process with its real lifespan (``create_app``, IMU data, ``imu-cnn1d``),
driven through ASGI (``fuzz_asgi``); ``fuzz_cloud.judge`` holds the oracles: no crash, no
hang, refusals with the protocol's code and close code, valid replies, and no state change
(the master bit-identical after a refused message, and finite always).

The default suite runs a few hundred sessions with a fixed seed; ``make fuzz`` runs
``SIMULTRAIN_FUZZ_FRAMES`` sessions (default 100 000) with ``SIMULTRAIN_FUZZ_SEED``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import random
import secrets
import time
import warnings

import numpy as np
import pytest
import torch
from fuzz_cloud import Cloud, Session, drive, judge, running_cloud
from fuzz_frames import Findings, FrameFacts, Message, hostile_message

from simultrain.shared.errors import ProtocolError
from simultrain.shared.protocol import (
    Ack,
    Act,
    Hello,
    Welcome,
    WireTensor,
    decode_frame,
    encode_frame,
)

REBUILD_EVERY = 5_000  # a fresh cloud now and then keeps per-edge state small
HOSTILE_KINDS = {
    "first": ("hello",) * 6 + ("act", "egrad", "welcome", "bye", "error"),
    "open": ("act",) * 4 + ("egrad",) * 3 + ("hello", "bye", "error", "grad", "snap", "ack"),
    "after_act": ("egrad",) * 4 + ("act",) * 3 + ("grad", "delta", "bye"),
}
SCENARIO_WEIGHTS = {"first": 2, "open": 5, "after_act": 3}


def _valid_act(rng: random.Random, seq: int, facts: FrameFacts) -> bytes:
    gen = np.random.default_rng(rng.getrandbits(32))
    return encode_frame(
        Act(
            seq=seq,
            edge_version=facts.version,
            activations=WireTensor(
                gen.standard_normal((facts.batch, *facts.cut_shape)).astype(np.float32), "lz4"
            ),
            labels=WireTensor(gen.integers(0, facts.num_classes, facts.batch, dtype=np.int64)),
        )
    )


@dataclasses.dataclass
class Campaign:
    seed: int | str
    count: int
    findings: Findings
    sessions: dict[str, int] = dataclasses.field(default_factory=dict)
    messages_sent: int = 0
    accepted: int = 0
    rebuilt: int = 0
    seconds: float = 0.0
    warnings: list[str] = dataclasses.field(default_factory=list)


class FuzzedCloud:
    """The cloud under fuzz; replaced by a fresh one now and then, and after a corruption."""

    def __init__(self) -> None:
        self._cm: contextlib.AbstractAsyncContextManager[Cloud] | None = None
        self.cloud: Cloud | None = None
        self.acked: dict[str, int] = {}  # highest acknowledged seq per edge id, from replies
        self.fresh = -1

    async def renew(self) -> Cloud:
        await self.close()
        self._cm = running_cloud()
        self.cloud = await self._cm.__aenter__()
        self.acked.clear()
        self.fresh += 1
        return self.cloud

    async def close(self) -> None:
        if self._cm is not None:
            cm, self._cm = self._cm, None
            await cm.__aexit__(None, None, None)

    def note_replies(self, edge_id: str, session: Session) -> None:
        for replies in session.replies:
            for reply in replies:
                with contextlib.suppress(ProtocolError):
                    frame = decode_frame(reply)
                    seq = frame.acked_seq if isinstance(frame, Welcome) else None
                    seq = frame.seq if isinstance(frame, Ack) else seq
                    if seq is not None:
                        self.acked[edge_id] = max(self.acked.get(edge_id, -1), seq)


def plan_session(
    cloud: Cloud, seed: int | str, index: int, edge_id: str, acked: int
) -> tuple[Session, Message]:
    """Session ``index``: its scenario, valid prefix and hostile message."""
    plan = random.Random(f"{seed}:{index}:plan")
    scenario = plan.choices(list(SCENARIO_WEIGHTS), list(SCENARIO_WEIGHTS.values()))[0]
    base = cloud.facts(edge_id, next_seq=acked + 1, batch=plan.choice((1, 2)))
    hello = Hello(edge_id=edge_id, model_id=base.model_id, cut_shape=base.cut_shape)
    prefix: list[bytes | str] = [] if scenario == "first" else [encode_frame(hello)]
    facts = base
    if scenario == "after_act":
        prefix.append(_valid_act(plan, base.next_seq, base))
        facts = dataclasses.replace(base, next_seq=base.next_seq + 1)
    message = hostile_message(seed, index, facts, kinds=HOSTILE_KINDS[scenario])
    return Session(scenario, [*prefix, message.data]), message


async def run_campaign(seed: int | str, count: int) -> Campaign:
    campaign = Campaign(seed, count, Findings(seed))
    pool = [f"fuzz-edge-{i}" for i in range(4)]
    logger = logging.getLogger("simultrain.cloud")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # a refused session logs a warning; 100 000 of them
    started = time.perf_counter()
    fuzzed = FuzzedCloud()
    cloud = await fuzzed.renew()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            for index in range(count):
                if index and index % REBUILD_EVERY == 0:
                    cloud = await fuzzed.renew()
                slot = index % len(pool)
                edge_id = pool[slot]
                acked = fuzzed.acked.get(edge_id, -1)
                session, message = plan_session(cloud, seed, index, edge_id, acked)
                await drive(cloud, session)
                campaign.sessions[session.scenario] = campaign.sessions.get(session.scenario, 0) + 1
                campaign.messages_sent += len(session.messages) + (session.bye_close is not None)
                campaign.accepted += session.closed_at is None
                context = f"[scenario {session.scenario}, edge {edge_id}, acked {acked}]"
                judge(
                    session,
                    cloud.service.limits,
                    functools.partial(_record, campaign.findings, index, message, context),
                )
                fuzzed.note_replies(edge_id, session)
                if fuzzed.acked.get(edge_id, -1) > 1 << 40:  # a huge seq was applied
                    pool[slot] = f"fuzz-edge-{index}"  # retire the id: its ACTs would all fail
                if session.hang or not bool(torch.isfinite(cloud.master_state()[1]).all()):
                    cloud = await fuzzed.renew()
            campaign.warnings = sorted(
                {f"{w.category.__name__}: {w.message}"[:200] for w in caught}
            )
    finally:
        await fuzzed.close()
        logger.setLevel(level)
    campaign.rebuilt = fuzzed.fresh
    campaign.seconds = time.perf_counter() - started
    return campaign


def _record(
    findings: Findings,
    index: int,
    message: Message,
    context: str,
    oracle: str,
    signature: str,
    detail: str,
    trace: str = "",
) -> None:
    findings.add(oracle, signature, f"{detail} {context}", index, message, trace)


def _summary(campaign: Campaign) -> str:
    return (
        f"cloud stream fuzz: {campaign.count} hostile sessions {campaign.sessions}, "
        f"{campaign.messages_sent} messages sent, {campaign.accepted} hostile messages accepted, "
        f"seed {campaign.seed}, {campaign.seconds:.1f}s ({campaign.count / campaign.seconds:.0f}"
        f"/s), {campaign.rebuilt} fresh clouds, {len(campaign.findings.by_signature)} finding(s)"
        + "".join(f"\n  warning seen: {w}" for w in campaign.warnings)
    )


REPLAY = "hostile_message({seed!r}, {index}, facts) in tests/fuzz/test_fuzz_cloud_stream.py"


async def test_cloud_stream_fuzz_smoke() -> None:
    """Default suite: 400 hostile sessions against the endpoint, fixed seed."""
    campaign = await run_campaign("smoke-2026", 400)
    assert not campaign.findings, campaign.findings.report(replay=REPLAY)


@pytest.mark.fuzz
@pytest.mark.timeout(3600)
async def test_cloud_stream_fuzz_campaign() -> None:
    seed = os.environ.get("SIMULTRAIN_FUZZ_SEED") or str(secrets.randbits(32))
    count = int(os.environ.get("SIMULTRAIN_FUZZ_FRAMES", "100000"))
    campaign = await run_campaign(seed, count)
    print("\n" + _summary(campaign))
    assert not campaign.findings, (
        _summary(campaign) + "\n" + campaign.findings.report(replay=REPLAY)
    )
