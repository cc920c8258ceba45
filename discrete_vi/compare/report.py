"""The report of a folder of runs (read by `summary`): `results.csv` (one row per run),
`report.md` (grouped over seeds, beside the published numbers where a configuration matches
one: `vs_published`) and the plots (`plots`)."""

from __future__ import annotations

import csv
import math
from pathlib import Path


from discrete_vi.compare import plots, vs_published
from discrete_vi.compare.summary import METRICS, SEED_KEY, RunData, find_runs, grid_keys, group, mean_std, summarize

def write_results_csv(runs: list[RunData], path: Path) -> list[dict]:
    """One row per run: name, grid values, seed, done, METRICS' columns, then the published values
    its configuration matches (`vs_published.csv_columns`). Returns the rows."""
    keys = [k for k in grid_keys(runs) if k != SEED_KEY]
    rows = []
    for run, published in zip(runs, vs_published.csv_columns(runs)):
        row = {"run": run.name, **{k: run.values.get(k, "") for k in keys}, "seed": run.seed, "done": run.done,
               "damaged": "; ".join(run.damaged)}
        row.update({k: (round(v, 4) if isinstance(v, float) and not math.isnan(v) else ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v))
                    for k, v in summarize(run).items()})
        row.update(published)
        rows.append(row)
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]) if rows else ["run"])
        writer.writeheader()
        writer.writerows(rows)
    return rows


def markdown_table(runs: list[RunData]) -> str:
    """The grouped table: one row per configuration, `mean ± std` over its seeds, the best mean
    of each column in bold."""
    groups = group(runs)
    stats = {label: {k: mean_std([summarize(r)[k] for r in members]) for k in METRICS} for label, members in groups.items()}
    best = {}
    for column, (_, higher) in METRICS.items():
        means = [stats[label][column][0] for label in groups if not math.isnan(stats[label][column][0])]
        if means:
            best[column] = max(means) if higher else min(means)
    digits = {"steps_per_s": 1, "wall_s": 0, "log10_grad_variance": 3}
    header = ["configuration", "n", *METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, members in groups.items():
        cells = [f"{label} ⚠" if any(r.damaged for r in members) else label, str(len(members))]
        for column in METRICS:
            mean, std, n = stats[label][column]
            if n == 0:
                cells.append("–")
                continue
            d = digits.get(column, 2)
            text = f"{mean:.{d}f} ± {std:.{d}f}" if n > 1 else f"{mean:.{d}f}"
            if len(groups) > 1 and column in best and math.isclose(mean, best[column]):
                text = f"**{text}**"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report_md(runs: list[RunData], out: Path, plots: list[Path], plot_note: str | None, header: str = "") -> Path:
    """`report.md`: the grouped table, the columns' meaning, the published numbers the runs' configurations
    match (`vs_published.markdown_section`), the plots (or how to get them)."""
    path = out / "report.md"
    unfinished = [r.name for r in runs if not r.done]
    parts = [f"# Comparison: {out.name}", ""]
    if header:
        parts += [header, ""]
    parts += [markdown_table(runs), "",
              "Mean ± standard deviation over seeds (n runs per configuration); best mean per column in bold. "
              "Per run: `results.csv`.", ""]
    parts += ["| column | meaning |", "|---|---|", *(f"| {k} | {meaning} |" for k, (meaning, _) in METRICS.items()), ""]
    parts += vs_published.markdown_section(runs)
    if unfinished:
        parts += [f"Unfinished runs (no test yet, shown with what they logged): {', '.join(unfinished)}.", ""]
    damaged = [f"- {r.name}: {problem}" for r in runs for problem in r.damaged]
    if damaged:
        parts += ["⚠ Rows built from damaged files (their numbers may be off; rerun those runs):", *damaged, ""]
    for plot in plots:
        parts += [f"![{plot.stem}]({plot.name})", ""]
    if plot_note:
        parts += [plot_note, ""]
    path.write_text("\n".join(parts))
    return path


def write_report(out: Path, header: str = "", runs: list[RunData] | None = None) -> tuple[list[RunData], list[Path]]:
    """Read every run under `out` (unless `runs` holds them already); write `results.csv`, `report.md`
    and the plots. Returns the runs and the files written."""
    out = Path(out)
    runs = find_runs(out) if runs is None else runs
    written = [out / "results.csv"]
    write_results_csv(runs, written[0])
    try:
        pictures = plots.write_plots(group(runs), out)
        note = None
    except plots.MatplotlibMissing:
        pictures, note = [], "Plots need matplotlib: `pip install matplotlib` (or `pip install -e '.[plot]'` in a checkout of discrete-vi), then `discrete-vi report OUT`."
    written += pictures
    written.append(write_report_md(runs, out, pictures, note, header))
    return runs, written
