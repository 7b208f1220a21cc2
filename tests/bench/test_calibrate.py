"""The edge CPU calibration: the ResNet-18 is the real one, k is reference ÷ measured."""

from __future__ import annotations

import pytest
import torch

from simultrain.bench.calibrate import PI4_RESNET18_FORWARD_MS, ResNet18, calibrate, slowdown_for


def test_resnet18_has_torchvisions_shape() -> None:
    model = ResNet18().eval()
    # torchvision.models.resnet18(): 11,689,512 parameters.
    assert sum(p.numel() for p in model.parameters()) == 11_689_512
    with torch.inference_mode():
        assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)


def test_slowdown_is_reference_over_measured_never_below_one() -> None:
    assert slowdown_for(25.0) == pytest.approx(PI4_RESNET18_FORWARD_MS / 25.0)
    assert slowdown_for(400.0) == 1.0
    with pytest.raises(ValueError):
        slowdown_for(0.0)


def test_calibrate_measures_and_restores_threads() -> None:
    before = torch.get_num_threads()
    result = calibrate(threads=1, repeats=2, warmup=1)
    assert torch.get_num_threads() == before
    assert result.threads == 1 and result.repeats == 2
    assert 0 < result.forward_ms <= result.forward_ms_median
    assert result.as_dict()["slowdown"] == pytest.approx(result.slowdown, abs=1e-3)
