"""`discrete-vi compare` and `discrete-vi report`: grids of runs, run in parallel (a local
process pool or a Ray cluster), resumable, and a report of them (results.csv, report.md, plots).

- `grid.py`: parsing `--grid KEY=V1,V2,...`, the cross product, run names;
- `runner.py`: one run (fit, then test on its last checkpoint, in processes of their own), the
  local pool and the Ray launcher;
- `report.py`: reading runs' TensorBoard events, `results.csv` and `report.md`;
- `plots.py`: the training-ELBO and gradient-variance figures (matplotlib, optional);
- `command.py`: the two subcommands' parsers and entry points.
"""
