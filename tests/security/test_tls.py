"""TLS end to end with real processes (SECURITY.md, "TLS").

A throwaway CA and a server certificate for 127.0.0.1 are made at test time (trustme). The
coordinator and the cloud serve HTTPS/WSS on port 0 of 127.0.0.1; clients that trust the CA
get through, clients that do not are refused by certificate verification, and an edge agent
given the CA file (``SIMULTRAIN_EDGE_CA_FILE``) registers over HTTPS, streams over WSS and
finishes its steps.

The coordinator and cloud run in development mode (no tokens): authentication has its own
tests; this module is about the transport.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import certifi
import httpx
import pytest
import trustme
from websockets.asyncio.client import connect

from simultrain.edge.coordinator_client import CoordinatorClient
from simultrain.edge.settings import EdgeSettings
from simultrain.procs import ServiceGroup
from simultrain.shared.errors import SimulTrainError
from simultrain.shared.models import get_model_spec
from simultrain.shared.protocol import Bye, Error, Hello, Snap, Welcome, decode_frame, encode_frame

pytestmark = pytest.mark.integration

START_TIMEOUT_S = 120
EDGE_TIMEOUT_S = 240
MODEL = get_model_spec("imu-cnn1d")


@dataclass(frozen=True)
class Pki:
    ca_file: Path
    cert_file: Path
    key_file: Path
    rogue_ca_file: Path  # a CA that did not sign the servers' certificate


@dataclass(frozen=True)
class TlsCluster:
    pki: Pki
    coordinator_url: str
    cloud_url: str
    group: ServiceGroup


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(root / "ca.pem")
    server.private_key_pem.write_to_path(root / "server.key")
    server.cert_chain_pems[0].write_to_path(root / "server.pem")
    for blob in server.cert_chain_pems[1:]:
        blob.write_to_path(root / "server.pem", append=True)
    trustme.CA().cert_pem.write_to_path(root / "rogue-ca.pem")
    return Pki(root / "ca.pem", root / "server.pem", root / "server.key", root / "rogue-ca.pem")


@pytest.fixture(scope="module")
def cluster(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsCluster]:
    tmp = tmp_path_factory.mktemp("tls-cluster")
    with ServiceGroup(log_dir=tmp / "logs") as group:
        coordinator = group.start(
            "coordinator",
            "simultrain.coordinator",
            {
                "SIMULTRAIN_COORDINATOR_HOST": "127.0.0.1",
                "SIMULTRAIN_COORDINATOR_PORT": "0",
                "SIMULTRAIN_COORDINATOR_DB_PATH": str(tmp / "coordinator.db"),
                "SIMULTRAIN_COORDINATOR_LOG_LEVEL": "warning",
                "SIMULTRAIN_COORDINATOR_SSL_CERTFILE": str(pki.cert_file),
                "SIMULTRAIN_COORDINATOR_SSL_KEYFILE": str(pki.key_file),
            },
        )
        coordinator_url = coordinator.wait_listening(timeout_s=START_TIMEOUT_S)
        cloud = group.start(
            "cloud",
            "simultrain.cloud",
            {
                "SIMULTRAIN_CLOUD_HOST": "127.0.0.1",
                "SIMULTRAIN_CLOUD_PORT": "0",
                "SIMULTRAIN_CLOUD_COORDINATOR_URL": coordinator_url,
                "SIMULTRAIN_CLOUD_LOG_LEVEL": "warning",
                "SIMULTRAIN_CLOUD_HEARTBEAT_INTERVAL_S": "1",
                "SIMULTRAIN_CLOUD_SSL_CERTFILE": str(pki.cert_file),
                "SIMULTRAIN_CLOUD_SSL_KEYFILE": str(pki.key_file),
                # The cloud's client for the coordinator has no CA setting of its own; httpx
                # reads the standard variable.
                "SSL_CERT_FILE": str(pki.ca_file),
            },
        )
        cloud_url = cloud.wait_listening(timeout_s=START_TIMEOUT_S)
        yield TlsCluster(pki, coordinator_url, cloud_url, group)


def _trusting(ca_file: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file))


def _public_roots_only() -> ssl.SSLContext:
    """What a client without our CA has: the public roots (certifi), nothing from the env."""
    return ssl.create_default_context(cafile=certifi.where())


def test_servers_announce_https(cluster: TlsCluster) -> None:
    assert cluster.coordinator_url.startswith("https://127.0.0.1:")
    assert cluster.cloud_url.startswith("https://127.0.0.1:")


@pytest.mark.parametrize("server", ["coordinator", "cloud"])
def test_https_healthz_with_the_ca(cluster: TlsCluster, server: str) -> None:
    url = cluster.coordinator_url if server == "coordinator" else cluster.cloud_url
    with httpx.Client(verify=_trusting(cluster.pki.ca_file), trust_env=False) as client:
        reply = client.get(f"{url}/healthz", timeout=10)
    assert reply.status_code == 200
    assert reply.json()["status"] == "ok"


@pytest.mark.parametrize("server", ["coordinator", "cloud"])
def test_https_without_the_ca_fails_verification(cluster: TlsCluster, server: str) -> None:
    url = cluster.coordinator_url if server == "coordinator" else cluster.cloud_url
    for verify in (_public_roots_only(), _trusting(cluster.pki.rogue_ca_file)):
        with (
            httpx.Client(verify=verify, trust_env=False) as client,
            pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
        ):
            client.get(f"{url}/healthz", timeout=10)


def test_no_cleartext_fallback(cluster: TlsCluster) -> None:
    """Plain HTTP to a TLS port gets no answer a client could mistake for the service's."""
    url = cluster.coordinator_url.replace("https://", "http://", 1)
    with httpx.Client(trust_env=False) as client:
        try:
            reply = client.get(f"{url}/healthz", timeout=10)
        except httpx.HTTPError:
            return
    assert reply.status_code >= 400  # some stacks answer 400 "plain HTTP to HTTPS port"


def _wss(cluster: TlsCluster) -> str:
    return cluster.cloud_url.replace("https://", "wss://", 1) + "/v1/stream"


def _hello(edge_id: str) -> bytes:
    return encode_frame(Hello(edge_id=edge_id, model_id=MODEL.model_id, cut_shape=MODEL.cut_shape))


async def test_wss_handshake_with_the_ca(cluster: TlsCluster) -> None:
    async with connect(
        _wss(cluster), ssl=_trusting(cluster.pki.ca_file), compression=None, open_timeout=30
    ) as ws:
        await ws.send(_hello("tls-edge-1"))
        welcome = decode_frame(await asyncio.wait_for(ws.recv(), 30))
        snap = decode_frame(await asyncio.wait_for(ws.recv(), 30))
        assert isinstance(welcome, Welcome) and welcome.cut_shape == MODEL.cut_shape
        assert isinstance(snap, Snap) and not snap.reconcile
        await ws.send(encode_frame(Bye(reason="done")))
        await ws.wait_closed()
    assert ws.close_code == 1000


async def test_wss_hostile_frame_is_refused_over_tls(cluster: TlsCluster) -> None:
    """The real server path (uvicorn, TLS): garbage gets an ERROR and close 1002, no 1011."""
    async with connect(
        _wss(cluster), ssl=_trusting(cluster.pki.ca_file), compression=None, open_timeout=30
    ) as ws:
        await ws.send(b"\x81\xa1v\x01\xc1")
        error = decode_frame(await asyncio.wait_for(ws.recv(), 30))
        await ws.wait_closed()
    assert isinstance(error, Error) and error.code == "malformed_frame"
    assert ws.close_code == 1002


async def test_wss_without_the_ca_fails_verification(cluster: TlsCluster) -> None:
    for context in (_public_roots_only(), _trusting(cluster.pki.rogue_ca_file)):
        with pytest.raises(ssl.SSLCertVerificationError):
            async with connect(_wss(cluster), ssl=context, open_timeout=30):
                pass


async def test_stream_does_not_negotiate_permessage_deflate(cluster: TlsCluster) -> None:
    """PROTOCOL.md §1: no second decompression path beside the protocol's bounded lz4."""
    async with connect(
        _wss(cluster), ssl=_trusting(cluster.pki.ca_file), compression="deflate", open_timeout=30
    ) as ws:
        extensions = [type(ext).__name__ for ext in ws.protocol.extensions]
    assert extensions == []


async def test_edge_coordinator_client_verifies_with_its_ca_file(cluster: TlsCluster) -> None:
    trusting = CoordinatorClient(
        EdgeSettings(coordinator_url=cluster.coordinator_url, ca_file=cluster.pki.ca_file)
    )
    try:
        assignment = await trusting.register(attempts=1)
    finally:
        await trusting.close()
    assert assignment.cloud_url.startswith("wss://127.0.0.1:")  # the cloud registered wss

    rogue = CoordinatorClient(
        EdgeSettings(coordinator_url=cluster.coordinator_url, ca_file=cluster.pki.rogue_ca_file)
    )
    try:
        with pytest.raises(SimulTrainError, match="CERTIFICATE_VERIFY_FAILED"):
            await rogue.register(attempts=1)
    finally:
        await rogue.close()


def test_edge_agent_trains_over_tls(cluster: TlsCluster) -> None:
    edge = cluster.group.start(
        "edge",
        "simultrain.edge",
        {
            "SIMULTRAIN_EDGE_COORDINATOR_URL": cluster.coordinator_url,
            "SIMULTRAIN_EDGE_CA_FILE": str(cluster.pki.ca_file),
            "SIMULTRAIN_EDGE_STEPS": "20",
            "SIMULTRAIN_EDGE_NAME": "tls-edge",
            "SIMULTRAIN_EDGE_LOG_LEVEL": "warning",
        },
    )
    report = json.loads(edge.wait_for_line("DONE ", timeout_s=EDGE_TIMEOUT_S))
    assert edge.popen.wait(timeout=60) == 0
    assert report["steps"] >= 20
    assert report["batches_acked"] >= 20
    assert report["sessions"] >= 1
