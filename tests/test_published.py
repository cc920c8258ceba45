"""Published numbers beside a comparison: the stored tables, matching a run to them by its
configuration (not its folder's name), and what `discrete-vi report` writes from them."""

import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from discrete_vi.compare import published, vs_published
from discrete_vi.compare.report import write_report
from discrete_vi.estimators import ESTIMATORS

ROOT = Path(__file__).resolve().parents[1]
RODEO_CONFIGS = sorted((ROOT / "configs" / "compare").glob("rodeo_*.yaml"))


def fit_config(estimator="DisARM", estimator_args=None, dataset="mnist", network="nonlinear", latent_sizes=(200,),
               test_samples=2, max_steps=2000, **model):
    """A configuration as `fit` saves it in config.yaml (the keys matching reads)."""
    return {
        "seed_everything": 1,
        "trainer": {"max_steps": max_steps, "log_every_n_steps": 10},
        "model": {"class_path": "discrete_vi.models.BinaryVAE", "init_args": {
            "estimator": {"class_path": f"discrete_vi.estimators.{estimator}", "init_args": estimator_args or {}},
            "latent_sizes": list(latent_sizes), "network": network, "test_samples": test_samples, **model}},
        "data": {"dataset": dataset, "batch_size": 100},
    }


def found(config) -> dict[tuple[str, str], vs_published.Match]:
    return {(m.published.table.label, m.published.metric): m for m in vs_published.matches(vs_published.config_setup(config))}


# --- the stored tables ------------------------------------------------------------------------

def test_the_tables_hold_every_row_of_the_transcription():
    count = {}
    for value in published.PUBLISHED:
        count[(value.table.label, value.metric)] = count.get((value.table.label, value.metric), 0) + 1
    assert count[("RODEO Table 1", "train_elbo")] == 10 * 3
    assert count[("RODEO Table 2", "test_bound")] == 10 * 3
    assert count[("RODEO Table 5", "train_elbo")] == count[("RODEO Table 5", "test_bound")] == 9 * 3
    assert count[("ARM Table 3", "test_bound")] == 7
    arm = {(v.table.name, v.setup.dataset, v.setup.network, v.setup.latent_sizes): v.value
           for v in published.ARM if v.estimator == "ARM"}
    assert arm[("Table 2", "binarized_mnist", "nonlinear", (200,))] == -98.4  # printed 98.4: -log p(x)
    assert arm[("Table 3", "binarized_mnist", "linear", (200, 200))] == -57.9
    assert arm[("Table 4", "binarized_mnist", "linear", (200, 200))] == -105.8


def test_every_value_is_a_log_likelihood_with_its_setup_and_steps():
    for value in published.PUBLISHED:
        assert value.value < 0 and math.isfinite(value.value), value
        assert value.metric in vs_published.METRIC_NAMES
        assert value.checked in (published.UNVERIFIED, published.CORROBORATED)
        if value.table.paper == "RODEO":
            assert value.steps == 10**6 and value.estimator in (*ESTIMATORS, "RELAX")
    table_2 = [v for v in published.RODEO if v.table is published.RODEO_TABLE_2]
    assert all(v.samples == v.evaluations for v in table_2 if v.estimator != "RELAX"), "K-sample bounds"
    assert {v.samples for v in published.RODEO if v.table is published.RODEO_TABLE_5 and v.metric == "test_bound"} == {100}
    assert "K-sample" in published.RODEO_TABLE_2.caveat
    assert sum(v.checked == published.CORROBORATED for v in published.PUBLISHED) == 4


# --- matching by configuration -----------------------------------------------------------------

def test_disarm_on_rodeo_table_1_matches_tables_1_and_2():
    matches = found(fit_config("DisARM", {"n_pairs": 1}))
    assert set(matches) == {("RODEO Table 1", "train_elbo"), ("RODEO Table 2", "test_bound")}
    assert matches[("RODEO Table 1", "train_elbo")].published.value == -102.75
    assert matches[("RODEO Table 2", "test_bound")].published.value == -101.61
    assert matches[("RODEO Table 2", "test_bound")].like_for_like


def test_each_estimator_matches_its_own_k():
    assert found(fit_config("RODEO", {"n_samples": 3}))[("RODEO Table 1", "train_elbo")].published.value == -100.46
    assert found(fit_config("ARMS", {"n_samples": 4}, test_samples=4))[("RODEO Table 2", "test_bound")].published.value == -98.10
    assert found(fit_config("RLOODoubleCV", {"n_samples": 2}, dataset="fashion_mnist"))[
        ("RODEO Table 1", "train_elbo")].published.value == -237.55
    assert found(fit_config("DisARM", {"n_pairs": 2})) == {}, "no DisARM row at K = 4"
    assert found(fit_config("ARMS", {"n_samples": 2})) == {}, "ARMS at K = 2 is not the DisARM row"
    assert found(fit_config("RLOO", {"n_samples": 2})) == {}, "no RLOO row"


def test_another_setup_matches_nothing():
    assert found(fit_config(network="linear")) == {}
    assert found(fit_config(latent_sizes=(100,))) == {}
    assert found(fit_config(dataset="binarized_mnist")) == {}
    assert found(fit_config(training_objective="multi_sample")) == {}


def test_a_test_bound_at_another_number_of_samples_is_not_like_for_like():
    match = found(fit_config("DisARM", {"n_pairs": 1}, test_samples=100))[("RODEO Table 2", "test_bound")]
    assert not match.like_for_like and "100-sample" in match.note and match.published.samples == 2


def test_hierarchies_match_table_5_by_their_layers():
    two = found(fit_config("DisARM", {"n_pairs": 1}, network="linear", latent_sizes=(200, 200), test_samples=100))
    assert two[("RODEO Table 5", "train_elbo")].published.value == -103.39
    assert two[("RODEO Table 5", "test_bound")].published.value == -97.56
    four = found(fit_config("DisARM", {"n_pairs": 1}, network="linear", latent_sizes=(200,) * 4, test_samples=100))
    assert four[("RODEO Table 5", "test_bound")].published.value == -93.56


def test_arm_tables_match_by_model_and_dataset():
    sbn = {"model": {"class_path": "discrete_vi.models.SigmoidBeliefNet", "init_args": {
        "estimator": {"class_path": "discrete_vi.estimators.ARM", "init_args": {"n_pairs": 1}},
        "latent_sizes": [200, 200], "test_samples": 1000}}, "data": {"dataset": "binarized_mnist"}}
    (match,) = vs_published.matches(vs_published.config_setup(sbn))
    assert match.published.table is published.ARM_TABLE_3 and match.published.value == -57.9 and match.like_for_like
    vae = found(fit_config("ARM", {"n_pairs": 1}, dataset="binarized_mnist", network="linear", test_samples=1000))
    assert vae[("ARM Table 2", "test_bound")].published.value == -107.2
    assert vae[("ARM Table 4", "test_elbo")].published.value == -116.2


@pytest.mark.parametrize("path", RODEO_CONFIGS, ids=[p.stem for p in RODEO_CONFIGS])
def test_every_rodeo_config_matches_its_table(path):
    config = yaml.safe_load(path.read_text())
    matches = vs_published.matches(vs_published.config_setup(config))
    table = "Table 1" if "table1" in path.stem else "Table 5"
    assert any(m.published.table.name == table for m in matches), path.stem
    assert path.read_text().startswith(f"# RODEO (Shi et al., NeurIPS 2022), {'Tables 1 and 2' if table == 'Table 1' else table}")


def test_steps_are_the_runs_own_and_say_how_far_from_the_published():
    run = SimpleNamespace(scalars={"train/elbo": ([9, 19, 1999], [0.0] * 3, [0.0] * 3)}, done=True)
    assert vs_published.steps_run(run, {"max_steps": 2000, "log_every_n_steps": 10}) == 2000
    assert vs_published.steps_run(SimpleNamespace(scalars=run.scalars, done=False), {"max_steps": 10**6}) == 2000
    assert vs_published.format_steps(10**6) == "10^6" and vs_published.format_steps(1_200_000) == "1.2×10^6"
    assert vs_published.steps_text([2000, 2000], 10**6) == "2,000 of 10^6"
    assert vs_published.steps_text([1800, 2000], 10**6) == "1,800–2,000 of 10^6"
    assert vs_published.is_shorter([2000], 10**6) and not vs_published.is_shorter([10**6], 10**6)


# --- the report -----------------------------------------------------------------------------------

def fake_run(root: Path, name: str, config: dict, train_elbo: float, test_bound: float, steps: int = 2000) -> None:
    """A finished run folder: config.yaml, TensorBoard events (train/elbo every 10 steps, the test
    scalars) and done.json, as `discrete-vi compare` leaves one."""
    from torch.utils.tensorboard import SummaryWriter

    version = root / name / "lightning_logs" / "version_0"
    version.mkdir(parents=True)
    (version / "config.yaml").write_text(yaml.safe_dump(config))
    writer = SummaryWriter(str(version))
    for step in range(9, steps, 10):
        writer.add_scalar("train/elbo", train_elbo, step)
    writer.add_scalar("test/log_likelihood", test_bound, steps)
    writer.add_scalar("test/elbo", test_bound - 5.0, steps)
    writer.close()
    (root / name / "done.json").write_text(json.dumps({"wall_seconds": 10.0}))
    (root / name / "run.json").write_text(json.dumps({"name": name, "values": {
        "model.estimator": config["model"]["init_args"]["estimator"]["class_path"].rpartition(".")[2],
        "seed_everything": str(config["seed_everything"])}}))


def test_report_prints_the_published_values_the_differences_and_the_shortfall(tmp_path):
    out = tmp_path / "cmp"
    for seed, elbo in ((1, -140.0), (2, -142.0)):
        config = {**fit_config("DisARM", {"n_pairs": 1}), "seed_everything": seed}
        fake_run(out, f"estimator=DisARM_seed={seed}", config, elbo, -120.0 - seed)
    # folder named after RODEO, configured as RLOO: matched by its configuration, so nothing published
    fake_run(out, "estimator=RODEO_seed=1", fit_config("RLOO", {"n_samples": 2}), -150.0, -125.0)
    write_report(out)
    with open(out / "results.csv") as file:
        rows = {row["run"]: row for row in csv.DictReader(file)}
    disarm = rows["estimator=DisARM_seed=1"]
    assert float(disarm["published_train_elbo"]) == -102.75
    assert float(disarm["vs_published_train_elbo"]) == pytest.approx(-140.0 + 102.75)
    assert float(disarm["published_test_bound"]) == -101.61
    assert float(disarm["vs_published_test_bound"]) == pytest.approx(-121.0 + 101.61)
    assert disarm["published_source"] == "RODEO Table 1; RODEO Table 2" and disarm["published_steps"] == "2,000 of 10^6"
    rloo = rows["estimator=RODEO_seed=1"]
    assert rloo["published_train_elbo"] == rloo["published_source"] == ""
    report = (out / "report.md").read_text()
    section = report[report.index("## Beside the published numbers"):]
    assert "shorter than the published ones (2,000 of 10^6 steps)" in section
    train_row = next(line for line in section.splitlines() if line.startswith("| estimator=DisARM | train ELBO"))
    assert "-141.00 ± 1.41 (n=2)" in train_row and "-102.75 ± 0.08" in train_row and "-38.25" in train_row
    assert "**2,000 of 10^6**" in train_row and "RODEO Table 1" in train_row
    assert "estimator=RLOO" not in section and "estimator=RODEO" not in section
    assert "K-sample" in section, "Table 2's caveat is carried"


def test_report_without_a_published_match_has_no_section(tmp_path):
    out = tmp_path / "cmp"
    fake_run(out, "a", fit_config("RLOO", {"n_samples": 2}), -150.0, -125.0)
    write_report(out)
    assert "published" not in (out / "report.md").read_text().lower()
    with open(out / "results.csv") as file:
        assert not any(key.startswith("published") for key in next(csv.DictReader(file)))
