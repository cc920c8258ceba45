"""The papers' two figures for a comparison: training ELBO against steps and gradient variance
against steps, one colour per configuration (mean over seeds, min-max band). matplotlib is an
optional extra, imported only here.

A leaf: the figures take runs already grouped by configuration (`label -> runs`, each run with
`scalars`: tag -> (steps, values, wall times)), as `report.group` makes them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


class MatplotlibMissing(RuntimeError):
    """matplotlib is not installed."""


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MatplotlibMissing("matplotlib is not installed") from None
    return plt


def binned(steps: list[int], values: list[float], edges: np.ndarray) -> np.ndarray:
    """Mean of `values` in each bin `[edges[i], edges[i+1])` of steps (NaN where a bin is empty)."""
    steps_a, values_a = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    index = np.digitize(steps_a, edges) - 1
    sums = np.bincount(index.clip(0, len(edges) - 2), weights=values_a, minlength=len(edges) - 1)
    counts = np.bincount(index.clip(0, len(edges) - 2), minlength=len(edges) - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


KNOWN_COLOURS = {"ARM": 0, "DisARM": 2, "LocalDisARM": 3, "RLOODoubleCV": 4, "RLOO": 6, "Reinforce": 8, "REBAR": 9,
                 "RODEO": 10, "RELAX": 11, "ARMS": 12, "VIMCO": 14, "StraightThrough": 15, "NVIL": 16,
                 "GumbelSoftmaxST": 17, "MuProp": 18}
"""tab20 colour of each shipped estimator, so a name has one colour in every figure (a label
naming none takes the palette's remaining colours)."""


def colour_for(plt, label: str, index: int):
    """The colour of a configuration or basket label (`estimator=RLOO`, `RLOODoubleCV`, ...)."""
    import re

    names = re.findall(r"[A-Za-z]+", label)
    for name in sorted(KNOWN_COLOURS, key=len, reverse=True):
        if name in names:
            return plt.get_cmap("tab20")(KNOWN_COLOURS[name])
    free = [i for i in range(20) if i not in KNOWN_COLOURS.values()]
    return plt.get_cmap("tab20")(free[index % len(free)])


def _legend(ax) -> None:
    """Legend outside the axes, on the right, so it hides no curve."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def _having(groups: dict, tag: str) -> dict:
    """The groups' runs that logged `tag`, without the groups left empty."""
    kept = {label: [r for r in members if r.scalars.get(tag, ([],))[0]] for label, members in groups.items()}
    return {label: members for label, members in kept.items() if members}


def _band(ax, x, curves: np.ndarray, colour, label, log10: bool = False) -> None:
    """Mean over rows of `curves` [n_runs, n_points] with its min-max band (`log10`: the curves
    are log10 values, drawn as 10**value on a log axis, so the line is the geometric mean)."""
    with np.errstate(invalid="ignore"), __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("ignore", RuntimeWarning)
        mean, low, high = np.nanmean(curves, 0), np.nanmin(curves, 0), np.nanmax(curves, 0)
    ok = ~np.isnan(mean)
    if log10:
        mean, low, high = 10.0 ** mean, 10.0 ** low, 10.0 ** high
    marker = "o" if ok.sum() <= 40 else None  # sparse measurements: show where they are
    ax.plot(x[ok], mean[ok], color=colour, lw=1.6, marker=marker, ms=3.5, label=f"{label} (n={curves.shape[0]})")
    if curves.shape[0] > 1:
        ax.fill_between(x[ok], low[ok], high[ok], color=colour, alpha=0.2, lw=0)


def plot_training_elbo(groups: dict, path: Path, n_bins: int = 100) -> Path | None:
    """Training ELBO (nats) against steps: each run's train/elbo averaged in `n_bins` bins of
    steps (the smoothing), then mean and min-max over the seeds of a configuration."""
    plt = _pyplot()
    with_elbo = _having(groups, "train/elbo")
    if not with_elbo:
        return None
    top = max(r.scalars["train/elbo"][0][-1] for members in with_elbo.values() for r in members)
    edges = np.linspace(0, top + 1, n_bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    fig, ax = plt.subplots(figsize=(10, 4.6), dpi=120)
    lows = []
    for i, (label, members) in enumerate(with_elbo.items()):
        curves = np.stack([binned(*r.scalars["train/elbo"][:2], edges) for r in members])
        _band(ax, centres, curves, colour_for(plt, label, i), label)
        tail = curves[:, n_bins // 10:]
        if np.isfinite(tail).any():
            lows.append(np.nanmin(tail))
    if lows:  # leave out the first 10% of steps' steep rise, which would flatten the rest
        ax.set_ylim(bottom=min(lows) - 0.02 * abs(min(lows)))
    ax.set_xlabel("training step")
    ax.set_ylabel("train ELBO (nats, higher is better)")
    ax.set_title(f"Training ELBO (mean of train/elbo in bins of {max(1, round(top / n_bins))} steps;\nline: mean over seeds, band: min-max)", fontsize=10)
    ax.grid(alpha=0.3)
    _legend(ax)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_gradient_variance(groups: dict, path: Path, tag: str = "train/grad_variance") -> Path | None:
    """Gradient variance against steps, log scale: geometric mean over the seeds of a
    configuration (mean of log10), min-max band."""
    plt = _pyplot()
    with_var = _having(groups, tag)
    if not with_var:
        return None
    fig, ax = plt.subplots(figsize=(10, 4.6), dpi=120)
    for i, (label, members) in enumerate(with_var.items()):
        steps, curves = _log10_curves(members, tag)
        _band(ax, np.asarray(steps, dtype=float), curves, colour_for(plt, label, i), label, log10=True)
    return _save_variance_figure(plt, fig, ax, path, "Gradient variance along each run (encoder parameters)\n"
                                 "line: geometric mean over seeds, band: min-max")


def _log10_curves(members, tag: str):
    """Steps logged by any of `members` for `tag`, and each member's log10 values on them
    (`[len(members), len(steps)]`, nan where a run did not log that step or the value is not positive)."""
    steps = sorted({s for r in members for s in r.scalars[tag][0]})
    index = {s: j for j, s in enumerate(steps)}
    curves = np.full((len(members), len(steps)), np.nan)
    for row, r in enumerate(members):
        for s, v in zip(*r.scalars[tag][:2]):
            curves[row, index[s]] = math.log10(v) if v > 0 else np.nan
    return steps, curves


def plot_basket(runs: list, path: Path) -> Path | None:
    """The variance basket (`variance/<estimator>`, EstimatorVarianceBasket) against steps, log
    scale: one line per basket estimator, geometric mean over every run that logged it (at each
    step all estimators are measured at the same parameters and batch of each run), min-max band."""
    plt = _pyplot()
    tags = sorted({t for r in runs for t in r.scalars if t.startswith("variance/")})
    if not tags:
        return None
    fig, ax = plt.subplots(figsize=(10, 4.6), dpi=120)
    n_runs = 0
    for i, tag in enumerate(tags):
        members = [r for r in runs if r.scalars.get(tag, ([],))[0]]
        n_runs = max(n_runs, len(members))
        steps, curves = _log10_curves(members, tag)
        _band(ax, np.asarray(steps, dtype=float), curves, colour_for(plt, tag.split("/", 1)[1], i), tag.split("/", 1)[1], log10=True)
    return _save_variance_figure(plt, fig, ax, path, "Variance basket: every estimator at the same parameters and batch\n"
                                 f"line: geometric mean over {n_runs} runs, band: min-max")


def _save_variance_figure(plt, fig, ax, path: Path, title: str) -> Path:
    """Log-scale variance axes with their labels, title, grid and legend; saved to `path`."""
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("gradient variance (nats², log scale)\nmean over encoder parameters")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    _legend(ax)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_plots(groups: dict, out: Path) -> list[Path]:
    """`training_elbo.png`, `gradient_variance.png` and, for runs with a variance basket,
    `variance_basket.png` in `out` (those with data), from runs grouped by configuration.
    Raises MatplotlibMissing without matplotlib."""
    _pyplot()
    runs = [r for members in groups.values() for r in members]
    made = [plot_training_elbo(groups, out / "training_elbo.png"),
            plot_gradient_variance(groups, out / "gradient_variance.png"),
            plot_basket(runs, out / "variance_basket.png")]
    return [p for p in made if p is not None]
