"""Report, claims and plots from synthetic records (no processes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from simultrain.bench import report
from simultrain.bench.bench import ALL_MODES, BenchOptions, Case, full_plan, quick_plan
from simultrain.bench.plots import write_plots
from simultrain.bench.records import BenchFailure, BenchMeta, BenchRecord, HostInfo

MODES = report.MODE_ORDER


def _record(
    mode: str,
    *,
    suite: str = "systems",
    link: str = "4g",
    dataset: str = "imu",
    seed: int = 0,
    variant: str = "lz4",
    interval: float = 100.0,
    accuracy: float = 0.8,
    loss: float = 0.5,
    up: float = 50e3,
    down: float = 50e3,
    bound: float | None = None,
    window_size: int = 4,
) -> BenchRecord:
    bound = interval * 0.95 if bound is None else bound
    figures: dict[str, Any] = {
        "suite": suite,
        "case": f"{suite}/{dataset}/{link}/{variant}/{mode}/s{seed}",
        "mode": mode,
        "link": link,
        "dataset": dataset,
        "seed": seed,
        "variant": variant,
        "steps": 100,
        "step_interval_ms": interval,
        "step_latency_ms": interval * 2,
        "step_latency_p95_ms": interval * 3,
        "pipeline_bound_ms": bound,
        "sequential_bound_ms": interval,
        "bottleneck": "downlink",
        "edge_compute_ms": 10.0,
        "cloud_compute_ms": 5.0,
        "uplink_ms": 8.0,
        "downlink_ms": bound,
        "bytes_up_per_step": up,
        "bytes_down_per_step": down,
        "btp_byte_s": (up + down) * interval / 1e3,
        "edge_busy": 0.1,
        "cloud_busy": 0.05,
        "max_staleness": 4 if mode.startswith("simultrain") else 0,
        "mean_staleness": 3.5,
        "staleness_histogram": {"3": 5, "4": 95} if mode.startswith("simultrain") else {"0": 100},
        "accuracy": accuracy,
        "test_loss": loss,
        "rtt_ms": 30.0,
        "window_size": window_size,
        "accuracy_curve": [[1.0, 320, accuracy / 2, 1.0], [2.0, 3200, accuracy, loss]],
    }
    # What the report does not read, for a whole record.
    rest: dict[str, Any] = {
        "model_id": "imu-cnn1d",
        "batches": 70,
        "window": [20, 89],
        "step_latency_p50_ms": interval * 2,
        "test_samples": 773,
        "samples": 3200,
        "p95_staleness": 4,
        "stale_dropped": 0,
        "master_version": 200,
        "bytes_up_total": int(up * 100),
        "bytes_down_total": int(down * 100),
        "train_seconds": 2.0,
        "wall_seconds": 10.0,
        "eval_seconds": 0.1,
        "latency_sample_ms": [interval],
        "edge_slowdown": 1.0,
        "uplink_rate_bps": 50e6,
        "downlink_rate_bps": 50e6,
        "run_config": {"mode": mode},
        "window_override": None,
        "edge_report": {
            "steps": 100,
            "samples_sent": 3200,
            "reconnects": 0,
            "resyncs": 0,
            "reconciliations": 0,
            "resent": 0,
            "compute_seconds": 1.0,
            "seconds": 2.0,
            "errors": [],
        },
    }
    return BenchRecord.model_validate({**figures, **rest})


META = BenchMeta(
    command="simultrain bench",
    started="2026-12-07T00:00:00+0000",
    host=HostInfo(platform="Linux", python="3.11", torch="2", cpus=2),
    edge_slowdown=1.0,
    edge_threads=1,
    calibration=None,
    plan=[],
    cases=0,
)


@pytest.fixture
def records() -> list[BenchRecord | BenchFailure]:
    out: list[BenchRecord | BenchFailure] = []
    for link, sim_interval in (("4g", 10.0), ("5g", 30.0)):
        for mode in MODES:
            interval = sim_interval if mode.startswith("simultrain") else 100.0
            out.append(
                _record(
                    mode, link=link, interval=interval, up=150e3 if mode == "simultrain" else 50e3
                )
            )
    for seed in range(3):
        for mode in MODES:
            acc = {
                "centralized": 0.85,
                "fedavg": 0.80,
                "simultrain": 0.848,
                "simultrain-noforecast": 0.6,
            }.get(mode, 0.84)
            loss = 0.7 if mode == "simultrain-noreconcile" else 0.5
            out.append(
                _record(
                    mode,
                    suite="accuracy",
                    link="5g",
                    seed=seed,
                    accuracy=acc + 0.001 * seed,
                    loss=loss,
                )
            )
    out.append(_record("simultrain", suite="compression", variant="delta-int8", down=20e3))
    out.append(_record("simultrain", suite="window", interval=6.0, bound=5.8, window_size=8))
    out.append(
        BenchFailure(
            suite="systems",
            case="systems/video/4g/lz4/fedavg/s0",
            mode="fedavg",
            link="4g",
            dataset="video",
            seed=0,
            variant="lz4",
            steps=40,
            error="SimulTrainError: boom",
        )
    )
    return out


def _claim(claims: list[report.Claim], prefix: str) -> report.Claim:
    exact = [c for c in claims if c.claim == prefix]
    (match,) = exact or [c for c in claims if c.claim.startswith(prefix)]
    return match


def test_select_skips_failures_and_matches_tuples(
    records: list[BenchRecord | BenchFailure],
) -> None:
    assert len(report.select(records, mode="fedavg", suite="systems")) == 2
    assert len(report.select(records, mode="fedavg", link=("4g", "5g"), suite="systems")) == 2
    assert report.mean_std([1.0, 3.0]) == (2.0, pytest.approx(2**0.5))
    assert report.mean_std([2.0]) == (2.0, 0.0)


def test_claims_compare_against_paper_and_targets(
    records: list[BenchRecord | BenchFailure],
) -> None:
    claims = report.claims(records)
    four = _claim(claims, "step time vs SyncSGD, 4G, imu")
    assert four.holds is True and "−90.0 %" in four.measured  # 10 vs 100 ms
    five = _claim(claims, "step time vs SyncSGD, 5G, imu")
    assert five.holds is False and "−70.0 %" in five.measured and five.reason
    btp = _claim(claims, "bandwidth-time product vs SyncSGD, 4G, imu")
    # (150 + 50) kB × 10 ms vs (50 + 50) kB × 100 ms: −80 %.
    assert btp.holds is True and "−80.0 %" in btp.measured
    acc = _claim(claims, "accuracy vs centralized")
    assert acc.holds is True and "−0.20 points" in acc.measured
    assert _claim(claims, "FedAvg").holds is True
    assert _claim(claims, "ablation: no forecast").holds is True
    assert _claim(claims, "ablation: no reconciliation").holds is True  # +40 % loss
    bound = [c for c in claims if c.claim.startswith("interval ÷ pipeline bound")]
    assert len(bound) == 3  # 4G and 5G at W = 4, and the best window of the sweep
    assert bound and all(c.holds for c in bound)  # 0.95 of the interval


def test_window_sweep_reports_the_best_window(records: list[BenchRecord | BenchFailure]) -> None:
    claims = report.window_claims(records)
    bound = _claim(claims, "interval ÷ pipeline bound, 4G, imu, best W = 8")
    assert bound.holds is True and bound.measured.startswith("1.03")
    cut = _claim(claims, "step time vs SyncSGD, 4G, imu, best W = 8")
    assert cut.holds is True and "−94.0 %" in cut.measured
    text = report.render_report(records, META, [])
    assert "## Window sweep" in text


def test_too_few_seeds_is_not_evidence() -> None:
    rows = [_record(m, suite="accuracy", accuracy=0.8) for m in ("centralized", "simultrain")]
    (acc,) = report.accuracy_claims(rows)
    assert acc.holds is None and "≥ 3" in acc.reason


def test_report_and_plots_agree_with_the_records(
    records: list[BenchRecord | BenchFailure], tmp_path: Path
) -> None:
    plots = write_plots(records, tmp_path)
    names = {p.name for p in plots}
    assert {
        "accuracy_vs_time.png",
        "step_time.png",
        "bytes_per_step.png",
        "staleness_histogram.png",
        "compression.png",
    } <= names
    for path in plots:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = report.render_report(records, META, [str(p) for p in plots])
    for mode in MODES:
        assert f"| {mode} |" in text
    assert "UCF-101" in text and "WISDM" in text  # the paper's rows beside ours
    assert "systems/video/4g/lz4/fedavg/s0" in text  # failures are listed
    assert "![step_time](step_time.png)" in text
    assert "bandwidth-time product" in text


def test_plans_cover_every_mode_and_the_overrides_apply() -> None:
    for plan in (full_plan(), quick_plan()):
        systems = next(s for s in plan if s.name == "systems")
        # Every mode but the synthetic mode's ablation, which is measured on its own.
        assert set(systems.modes) == set(MODES) - {"synthetic-nolocal"} == set(ALL_MODES)
    # ... and it joins the suites it is asked of, beside their own modes.
    asked = BenchOptions(suites=("accuracy",), modes=("simultrain", "synthetic-nolocal"))
    assert [s.modes for s in asked.plan()] == [("simultrain", "synthetic-nolocal")] * 2
    full = {s.name: s for s in full_plan()}
    accuracy = [s for s in full_plan() if s.name == "accuracy"]
    assert all(len(s.seeds) >= 3 for s in accuracy)
    assert {d for s in accuracy for d in s.datasets} >= {"imu", "mnist"}
    assert set(full["systems"].links) >= {"4g", "5g", "lan"}
    options = BenchOptions(
        quick=True, links=("lan",), datasets=("imu",), steps=12, variants=("delta-int8",)
    )
    cases = [c for s in options.plan() for c in s.cases()]
    assert {c.link for c in cases} == {"lan"} and {c.steps for c in cases} == {12}
    assert {c.variant for c in cases if c.suite == "systems"} == {"lz4"}
    assert {c.variant for c in cases if c.suite == "compression"} == {"delta-int8"}
    config = Case("x", "simultrain", "4g", "imu", 1, "down-int8-topk10", 10, 0).run_config()
    assert (config.codecs.delta, config.codecs.grad, config.seed) == ("int8", "topk", 1)
