"""PNG plots of a benchmark run (matplotlib, headless): one function per figure.

- ``accuracy_vs_time.png``: held-out accuracy against training wall time, per mode, one panel
  per dataset (every seed drawn; the accuracy suite if the run has one);
- ``step_time.png``: steady-state step interval (top) and per-step latency (bottom, bars to
  the 95th percentile) per mode and link, one panel per dataset;
- ``bytes_per_step.png``: wire bytes per step, uplink and downlink, per mode (4G);
- ``staleness_histogram.png``: staleness histograms of the pipelined modes (``staleness.png``
  belongs to the staleness study, ``simultrain study``);
- ``compression.png``: downlink bytes and step interval per codec variant.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: files only

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from simultrain.bench.records import BenchFailure, BenchRecord
from simultrain.bench.report import MODE_ORDER, select

__all__ = ["write_plots"]

Record = BenchRecord
_COLORS = {mode: matplotlib.colormaps["tab10"](i) for i, mode in enumerate(MODE_ORDER)}


def _modes(records: Sequence[Record]) -> list[str]:
    present = {r.mode for r in records}
    return [m for m in MODE_ORDER if m in present]


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def accuracy_vs_time(records: Sequence[Record], path: Path) -> Path | None:
    source = select(records, suite="accuracy") or select(records, variant="lz4")
    if not source:
        return None
    datasets = sorted({r.dataset for r in source})
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        rows = select(source, dataset=dataset)
        link = rows[0].link
        for mode in _modes(rows):
            for index, r in enumerate(select(rows, mode=mode, link=link)):
                curve = r.accuracy_curve
                ax.plot(
                    [0.0] + [p[0] for p in curve],
                    [None] + [p[2] * 100 for p in curve],
                    marker="o",
                    markersize=3,
                    color=_COLORS[mode],
                    alpha=0.9 if index == 0 else 0.45,
                    label=mode if index == 0 else None,
                )
        ax.set_title(f"{dataset} ({link})")
        ax.set_xlabel("training wall time (s, evaluation pauses removed)")
        ax.set_ylabel("held-out accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)


def step_time(records: Sequence[Record], path: Path) -> Path | None:
    source = select(records, suite="systems", variant="lz4") or select(records, variant="lz4")
    if not source:
        return None
    datasets = sorted({r.dataset for r in source})
    fig, axes = plt.subplots(2, len(datasets), figsize=(5.5 * len(datasets), 7), squeeze=False)
    for column, dataset in enumerate(datasets):
        rows = select(source, dataset=dataset)
        links = sorted({r.link for r in rows})
        modes = _modes(rows)
        width = 0.8 / max(len(modes), 1)
        for m_index, mode in enumerate(modes):
            xs, interval, latency, p95 = [], [], [], []
            for l_index, link in enumerate(links):
                rs = select(rows, mode=mode, link=link)
                if not rs:
                    continue
                xs.append(l_index + (m_index - (len(modes) - 1) / 2) * width)
                interval.append(rs[0].step_interval_ms)
                latency.append(rs[0].step_latency_ms)
                p95.append(rs[0].step_latency_p95_ms - rs[0].step_latency_ms)
            color = _COLORS[mode]
            axes[0][column].bar(xs, interval, width, color=color, label=mode)
            axes[1][column].bar(
                xs, latency, width, color=color, yerr=[[0] * len(p95), p95], capsize=2
            )
        for row, label in ((0, "step interval (ms)"), (1, "step latency: batch → ACK (ms)")):
            ax = axes[row][column]
            ax.set_xticks(range(len(links)), links)
            ax.set_ylabel(label)
            ax.set_yscale("log")
            ax.grid(alpha=0.3, axis="y")
        axes[0][column].set_title(dataset)
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)


def bytes_per_step(records: Sequence[Record], path: Path) -> Path | None:
    source = select(records, suite="systems", variant="lz4") or select(records, variant="lz4")
    source = select(source, link="4g") or source
    if not source:
        return None
    datasets = sorted({r.dataset for r in source})
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        rows = select(source, dataset=dataset)
        modes = _modes(rows)
        up = [select(rows, mode=m)[0].bytes_up_per_step / 1e3 for m in modes]
        down = [select(rows, mode=m)[0].bytes_down_per_step / 1e3 for m in modes]
        xs = range(len(modes))
        ax.bar([x - 0.2 for x in xs], up, 0.4, label="uplink")
        ax.bar([x + 0.2 for x in xs], down, 0.4, label="downlink")
        ax.set_xticks(list(xs), modes, rotation=35, ha="right", fontsize=7)
        ax.set_ylabel("kB per step on the wire")
        ax.set_yscale("log")
        ax.set_title(f"{dataset} ({rows[0].link})")
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)


def staleness_histogram(records: Sequence[Record], path: Path) -> Path | None:
    pipelined = [
        r
        for r in select(records, variant="lz4")
        if r.mode.startswith("simultrain") and r.staleness_histogram
    ]
    source = select(pipelined, link=("4g", "5g")) or pipelined
    if not source:
        return None
    links = "/".join(sorted({r.link for r in source}))
    datasets = sorted({r.dataset for r in source})
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.6), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        rows = select(source, dataset=dataset)
        modes = _modes(rows)
        width = 0.8 / max(len(modes), 1)
        for index, mode in enumerate(modes):
            totals: dict[int, int] = {}
            for r in select(rows, mode=mode):
                for tau, count in r.staleness_histogram.items():
                    totals[int(tau)] = totals.get(int(tau), 0) + int(count)
            n = sum(totals.values()) or 1
            taus = sorted(totals)
            ax.bar(
                [t + (index - (len(modes) - 1) / 2) * width for t in taus],
                [totals[t] / n for t in taus],
                width,
                color=_COLORS[mode],
                label=mode,
            )
        ax.set_xlabel("staleness τ (master versions)")
        ax.set_ylabel("fraction of edge gradients")
        ax.set_title(f"{dataset} ({links} runs)")
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)


def compression(records: Sequence[Record], path: Path) -> Path | None:
    source = select(records, suite="compression")
    if not source:
        return None
    datasets = sorted({r.dataset for r in source})
    fig, axes = plt.subplots(2, len(datasets), figsize=(5 * len(datasets), 6.5), squeeze=False)
    for column, dataset in enumerate(datasets):
        rows = select(source, dataset=dataset)
        variants = list(dict.fromkeys(r.variant for r in rows))
        xs = list(range(len(variants)))
        down = [select(rows, variant=v)[0].bytes_down_per_step / 1e3 for v in variants]
        up = [select(rows, variant=v)[0].bytes_up_per_step / 1e3 for v in variants]
        interval = [select(rows, variant=v)[0].step_interval_ms for v in variants]
        bound = [select(rows, variant=v)[0].pipeline_bound_ms for v in variants]
        top, bottom = axes[0][column], axes[1][column]
        top.bar([x - 0.2 for x in xs], up, 0.4, label="uplink")
        top.bar([x + 0.2 for x in xs], down, 0.4, label="downlink")
        top.set_ylabel("kB per step")
        top.set_title(f"{dataset} ({rows[0].link})")
        bottom.bar([x - 0.2 for x in xs], interval, 0.4, label="step interval")
        bottom.bar([x + 0.2 for x in xs], bound, 0.4, label="pipeline bound")
        bottom.set_ylabel("ms per step")
        for ax in (top, bottom):
            ax.set_xticks(xs, variants, rotation=30, ha="right", fontsize=7)
            ax.grid(alpha=0.3, axis="y")
            ax.legend(fontsize=7)
    return _save(fig, path)


def write_plots(records: Sequence[BenchRecord | BenchFailure], out_dir: Path) -> list[Path]:
    """Every figure the records allow; the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = (
        (accuracy_vs_time, "accuracy_vs_time.png"),
        (step_time, "step_time.png"),
        (bytes_per_step, "bytes_per_step.png"),
        (staleness_histogram, "staleness_histogram.png"),
        (compression, "compression.png"),
    )
    measured = select(records)
    written = []
    for draw, name in figures:
        made = draw(measured, out_dir / name)
        if made is not None:
            written.append(made)
    return written
