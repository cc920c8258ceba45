"""`discrete-vi compare` and `discrete-vi report`: a small grid end to end (rows, grouped report,
plots), reuse on a second call, resuming a killed run, a failing run among others, Ray."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from discrete_vi.cli import main
from discrete_vi.compare.grid import GridError, expand, parse_grid

ROOT = Path(__file__).resolve().parents[1]
RUN_ARGS = [
    "--data.dataset", "mnist_subset", "--data.batch_size", "25", "--data.eval_batch_size", "100",
    "--model.latent_sizes", "[16]", "--model.val_samples", "4", "--model.test_samples", "8",
    "--trainer.max_steps", "24", "--trainer.limit_train_batches", "12", "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1",
    "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--trainer.callbacks+=discrete_vi.callbacks.GradientVarianceMonitor", "--trainer.callbacks.every_n_steps", "6",
]
GRID = ["--grid", "model.estimator=RLOO,DisARM", "--grid", "seed_everything=1,2"]
NAMES = ["estimator=DisARM_seed=1", "estimator=DisARM_seed=2", "estimator=RLOO_seed=1", "estimator=RLOO_seed=2"]


def compare(out, *args, grid=GRID, run_args=RUN_ARGS, **popen):
    """`discrete-vi compare` in a process of its own, importing this checkout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "discrete_vi.cli", "compare", *grid, "--out", str(out), *args, "--", *run_args]
    if popen:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def rows(out) -> list[dict]:
    with open(Path(out) / "results.csv") as file:
        return list(csv.DictReader(file))


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "cmp"
    start = time.time()
    result = compare(out, "--jobs", "2")
    return out, result, time.time() - start


def test_grid_gives_one_row_per_run_a_grouped_report_and_plots(grid_run):
    out, result, _ = grid_run
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(r["run"] for r in rows(out)) == NAMES
    for row in rows(out):
        assert row["done"] == "True" and row["seed"] in ("1", "2")
        for column in ("train_elbo", "val_bound_best", "test_elbo", "test_bound", "log10_grad_variance", "steps_per_s"):
            assert float(row[column]) == float(row[column]), (column, row)  # finite, not empty
    report = (out / "report.md").read_text()
    assert "| estimator=RLOO | 2 |" in report and "| estimator=DisARM | 2 |" in report and "**" in report
    for picture in ("training_elbo.png", "gradient_variance.png"):
        assert (out / picture).stat().st_size > 10_000 and f"]({picture})" in report
    lines = result.stdout.splitlines()
    assert sum(" start " in line for line in lines) == 4
    assert sum(line.startswith("[") and " done " in line and "steps/s" in line for line in lines) == 4
    assert "4 of 4 runs finished" in result.stdout


def test_a_second_identical_call_reuses_every_run(grid_run):
    out, _, first_seconds = grid_run
    start = time.time()
    again = compare(out, "--jobs", "2")
    seconds = time.time() - start
    assert again.returncode == 0, again.stderr
    assert again.stdout.count(" reused ") == 4 and " start " not in again.stdout
    assert seconds < 0.5 * first_seconds, (seconds, first_seconds)
    assert len(rows(out)) == 4


def test_a_failing_run_is_reported_while_the_others_finish(grid_run):
    out, _, _ = grid_run
    result = compare(out, "--jobs", "2", grid=["--grid", "model.estimator=RLOO,NoSuchEstimator", "--grid", "seed_everything=1,2"])
    assert result.returncode == 1
    assert result.stdout.count(" reused ") == 2, result.stdout  # the RLOO runs, as before
    assert result.stdout.count("FAILED estimator=NoSuchEstimator") == 2
    failed_log = out / "estimator=NoSuchEstimator_seed=1" / "run.log"
    assert str(failed_log) in result.stderr and "unknown estimator 'NoSuchEstimator'" in result.stderr
    assert "unknown estimator" in failed_log.read_text()
    assert len(rows(out)) == 4, "runs without logs are not rows"


def test_a_grid_on_the_multi_sample_bound_reports_its_training_bound(tmp_path):
    """VIMCO (K = 4) against LocalDisARM (K = 2 pairs) at 4 evaluations of f, both training the
    multi-sample objective: each row has its train bound as well as the ELBO and test bound."""
    out = tmp_path / "bound"
    grid = ["--grid", "model.estimator={class_path: VIMCO, init_args: {n_samples: 4}},"
                      "{class_path: LocalDisARM, init_args: {n_samples: 2}}"]
    result = compare(out, "--jobs", "2", grid=grid, run_args=[*RUN_ARGS, "--model.training_objective", "multi_sample"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(r["run"] for r in rows(out)) == ["estimator=LocalDisARM-n_samples=2", "estimator=VIMCO-n_samples=4"]
    for row in rows(out):
        for column in ("train_elbo", "train_bound", "test_bound", "log10_grad_variance"):
            assert float(row[column]) == float(row[column]), (column, row)
    vimco = next(row for row in rows(out) if "VIMCO" in row["run"])
    assert float(vimco["train_bound"]) >= float(vimco["train_elbo"]), vimco  # Jensen, step by step
    assert "train_bound" in (out / "report.md").read_text() and "train bound" in result.stdout


def test_report_on_a_folder_of_runs(grid_run, tmp_path):
    out, _, _ = grid_run
    (out / "report.md").unlink()
    main(["report", str(out)])
    assert (out / "report.md").is_file() and len(rows(out)) == 4


def test_a_killed_run_is_resumed_not_restarted(tmp_path):
    out = tmp_path / "killed"
    run_args = [*RUN_ARGS, "--trainer.max_steps", "150", "--trainer.limit_train_batches", "100",
                "--last_checkpoint.every_n_train_steps", "10"]
    grid = ["--grid", "seed_everything=3"]
    process = compare(out, grid=grid, run_args=run_args, start_new_session=True)
    checkpoint = out / "seed=3" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not checkpoint.is_file() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert checkpoint.is_file() and not (out / "seed=3" / "done.json").exists(), "killed mid-way"

    result = compare(out, grid=grid, run_args=run_args)
    assert result.returncode == 0, result.stdout + result.stderr
    log = (out / "seed=3" / "run.log").read_text()
    assert "Restoring states from the checkpoint" in log, "resumed from last.ckpt"
    events = EventAccumulator(str(checkpoint.parents[1]), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("train/elbo")] == list(range(150)), "each step once: resumed, not restarted"
    assert json.loads((out / "seed=3" / "done.json").read_text())["resumed_from"] == str(checkpoint)


def test_ray_launcher_runs_the_grid_on_a_local_ray(tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed here (pip install 'discrete-vi[ray]')")
    out = tmp_path / "ray"
    result = compare(out, "--launcher", "ray")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Ray (local)" in result.stdout
    assert sorted(r["run"] for r in rows(out)) == NAMES
    assert all(r["done"] == "True" and r["test_bound"] for r in rows(out))


def test_grid_expansion_and_names():
    grid = parse_grid(["model.estimator=RLOO,{class_path: Reinforce, init_args: {baseline: ema}}", "--seed_everything=1,2"])
    runs = expand(grid)
    assert [r.name for r in runs] == ["estimator=RLOO_seed=1", "estimator=RLOO_seed=2",
                                      "estimator=Reinforce-baseline=ema_seed=1", "estimator=Reinforce-baseline=ema_seed=2"]
    assert runs[2].args == ("--model.estimator", "{class_path: Reinforce, init_args: {baseline: ema}}", "--seed_everything", "1")
    assert [r.name for r in expand(parse_grid(["model.lr=0.001,0.0003", "data.batch_size=50"]))] == [
        "lr=0.001_batch_size=50", "lr=0.0003_batch_size=50"]
    assert expand([])[0].name == "run"


@pytest.mark.parametrize("spec, message", [
    ("model.estimator", "write KEY=V1,V2"),
    ("model.estimator=RLOO,,DisARM", "empty value"),
    ("model.estimator=RLOO,RLOO", "repeated"),
    ("mod el=1", "not an option name"),
])
def test_bad_grid_is_one_line_and_status_2(spec, message, capsys):
    with pytest.raises(GridError, match=message):
        parse_grid([spec])
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--grid", spec, "--out", "x"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("discrete-vi: error:") and message in err[0]


def test_compare_usage_errors_are_one_line(capsys, tmp_path):
    for args in (["compare", "--grid", "seed_everything=1"], ["compare", "--out", "x", "--jobs", "0"],
                 ["report", str(tmp_path)]):
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("discrete-vi: error:"), err


# --- a comparison never reports a run as finished that is not -------------------------------------

LONG_RUN = [*RUN_ARGS, "--trainer.max_steps", "2000", "--trainer.limit_train_batches", "1000",
            "--last_checkpoint.every_n_train_steps", "10"]


def wait_for(path: Path, process, seconds: float = 300) -> None:
    deadline = time.time() + seconds
    while not path.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert path.exists(), "the run never wrote its first checkpoint"


def fit_children(folder: Path) -> list[int]:
    """Process ids of the fits running in `folder`."""
    out = subprocess.run(["pgrep", "-f", f"default_root_dir {folder}"], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


def test_a_run_stopped_by_sigterm_is_not_reported_done(tmp_path):
    out = tmp_path / "stopped"
    process = compare(out, grid=["--grid", "seed_everything=5"], run_args=LONG_RUN, start_new_session=True)
    wait_for(out / "seed=5/lightning_logs/version_0/checkpoints/last.ckpt", process)
    for pid in fit_children(out / "seed=5"):
        os.kill(pid, signal.SIGTERM)  # the run alone, as a cluster's scheduler would
    stdout, _ = process.communicate(timeout=300)
    assert process.returncode == 1, stdout
    assert not (out / "seed=5/done.json").exists() and "FAILED seed=5" in stdout


def test_one_compare_per_output_folder_and_its_runs_end_with_it(tmp_path):
    out = tmp_path / "locked"
    first = compare(out, grid=["--grid", "seed_everything=6"], run_args=LONG_RUN, start_new_session=True)
    wait_for(out / "seed=6/lightning_logs/version_0/checkpoints/last.ckpt", first)
    second = compare(out, grid=["--grid", "seed_everything=6"], run_args=LONG_RUN)
    assert second.returncode == 2
    assert second.stderr.strip().splitlines() == [line for line in second.stderr.strip().splitlines()
                                                  if line.startswith("discrete-vi: error:")]
    assert "in use by process" in second.stderr and str(first.pid) in second.stderr
    children = fit_children(out / "seed=6")
    assert children
    os.kill(first.pid, signal.SIGKILL)  # the comparison dies without a chance to clean up
    first.wait()
    deadline = time.time() + 120
    while any(subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode == 0 for pid in children):
        assert time.time() < deadline, "a run outlived its comparison"
        time.sleep(0.2)


def interactive_ctrl_c() -> None:
    """In the child before it runs: Ctrl-C acts as in a terminal's foreground job. A command started
    in the background of a script (as CI may run these tests) inherits SIGINT ignored, and Python
    then keeps it ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_a_comparison_in_one_line(tmp_path):
    out = tmp_path / "interrupted"
    process = compare(out, grid=["--grid", "seed_everything=7"], run_args=LONG_RUN, start_new_session=True,
                      preexec_fn=interactive_ctrl_c)
    wait_for(out / "seed=7/lightning_logs/version_0/checkpoints/last.ckpt", process)
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole process group
    stdout, _ = process.communicate(timeout=300)
    assert process.returncode == 130
    assert "Traceback" not in stdout and "interrupted" in stdout
    assert not (out / "seed=7/done.json").exists() and not fit_children(out / "seed=7")


def test_damaged_inputs_are_named_and_their_rows_marked(grid_run, tmp_path):
    import shutil

    source, _, _ = grid_run
    out = tmp_path / "damaged"
    shutil.copytree(source, out)
    events = next((out / NAMES[0] / "lightning_logs/version_0").glob("events.out.tfevents.*"))
    content = bytearray(events.read_bytes())
    content[len(content) // 2] ^= 0x10  # one bit flipped
    events.write_bytes(bytes(content))
    (out / NAMES[1] / "done.json").write_text('{"name": "cut sh')
    (out / NAMES[2] / "run.json").write_text("\x00\x00")
    result = subprocess.run([sys.executable, "-m", "discrete_vi.cli", "report", str(out)], capture_output=True,
                            text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    damaged = [line for line in result.stderr.splitlines() if "is damaged" in line]
    assert len(damaged) == 3, result.stderr
    assert any(events.name in line for line in damaged) and any("done.json" in line for line in damaged)
    marked = {row["run"]: row["damaged"] for row in rows(out)}
    assert all(marked[name] for name in NAMES[:3]) and not marked[NAMES[3]]
    assert "⚠" in (out / "report.md").read_text()
    again = compare(out, "--jobs", "2")  # compare names them too, and checks those runs again
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr
    assert sum("is damaged" in line for line in again.stderr.splitlines()) >= 2
    assert json.loads((out / NAMES[2] / "run.json").read_text())["name"] == NAMES[2]  # a finished run's too
