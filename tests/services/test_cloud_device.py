"""Where the cloud computes: ``SIMULTRAIN_CLOUD_DEVICE`` (auto, cpu, cuda, cuda:N).

No GPU on the machines these tests run on: they check that the CPU path reports itself, that
a device that is not there is refused with one clear line before anything loads, and that the
master's boundaries (tensors in from the wire, out to the wire and to checkpoints) go through
the device the master names.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from fastapi.testclient import TestClient

from simultrain.cloud.app import create_app
from simultrain.cloud.settings import CloudSettings
from simultrain.shared.errors import ConfigError
from simultrain.shared.models import get_model_spec
from simultrain.shared.training.assembly import build_master, resolve_device
from simultrain.shared.training.config import RunConfig

NO_CUDA = not torch.cuda.is_available()


def test_auto_is_the_gpu_when_torch_sees_one_else_the_cpu() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("cuda:99", r"device 'cuda:99'"),
        ("gpu", r"device 'gpu'"),
        ("", r"device ''"),
        ("meta", r"use auto, cpu, cuda, cuda:N or mps"),
    ],
)
def test_a_device_that_is_not_there_is_refused(name: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_device(name)


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
def test_cuda_without_a_gpu_says_why() -> None:
    with pytest.raises(ConfigError, match=r"sees no CUDA device"):
        resolve_device("cuda")


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
def test_the_cloud_process_exits_2_with_one_line_when_the_gpu_is_missing() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "simultrain.cloud"],
        env={"SIMULTRAIN_CLOUD_DEVICE": "cuda", "SIMULTRAIN_CLOUD_PORT": "0", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"simultrain cloud: device 'cuda': torch {torch.__version__} sees no CUDA device "
        "(a CPU build, no driver, or no GPU given to this container)"
    ]


def test_status_reports_the_device() -> None:
    run = RunConfig(window=2)
    with TestClient(create_app(CloudSettings(device="cpu"), run=run)) as client:
        assert client.get("/v1/status").json()["device"] == "cpu"


def test_the_master_lives_on_the_device_it_was_built_for() -> None:
    run = RunConfig()
    master = build_master(run, get_model_spec("imu-cnn1d"), run.schedule(), device="cpu")
    assert master.device == torch.device("cpu")
    assert all(t.device == master.device for t in master.full_state().values())


def test_the_device_changes_where_the_master_computes_not_its_weights() -> None:
    """build_master(device=...) draws the weights on the CPU first, so the device changes
    where the arithmetic runs, never the initialisation: on the CPU, bit for bit."""
    run = RunConfig()
    spec = get_model_spec("imu-cnn1d")
    default = build_master(run, spec, run.schedule())
    explicit = build_master(run, spec, run.schedule(), device=resolve_device("cpu"))
    for name, tensor in default.full_state().items():
        assert torch.equal(tensor, explicit.full_state()[name])
