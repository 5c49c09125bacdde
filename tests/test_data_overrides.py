"""Per-attack training sizes (`data_overrides`): the grid poisons each attack's cell at its own size, a bad
override fails before anything runs, and the report never averages or compares cells of different sizes."""

import yaml

from conftest import run_cli
from test_verdict import NAMES, RETRAIN, metrics
from unbackdoor.config import load_yaml, resolve_config_path, validate
from unbackdoor.grid import ExperimentConfig, _data_config
from unbackdoor.reporting import summarise, table_markdown


def _preset(name):
    return validate(ExperimentConfig, load_yaml(resolve_config_path(name)))


def test_override_changes_only_its_attack_and_keeps_the_other_data_settings():
    cfg = validate(ExperimentConfig, {"datasets": ["agnews"], "poison": {"data": {"train_size": 1200, "test_size": 500}},
                                      "data_overrides": {"stylebkd": {"train_size": 2400}, "hiddenkiller": {"train_size": None}}})
    style, bad, hk = (_data_config(cfg, a, "agnews") for a in ("stylebkd", "badnets", "hiddenkiller"))
    assert (style.dataset, style.train_size, style.test_size) == ("agnews", 2400, 500)
    assert (bad.train_size, bad.test_size) == (1200, 500)
    assert (hk.train_size, hk.test_size) == (None, 500)  # null: the whole training set


def test_bad_overrides_fail_before_anything_runs(tmp_path, capsys):
    path = tmp_path / "g.yaml"
    out = tmp_path / "r"
    for over, message in [({"stylbkd": {"train_size": 10}}, "data_overrides: unknown attack 'stylbkd'; valid attacks:"),
                          ({"stylebkd": {"train_sise": 10}}, "unknown key 'train_sise'; did you mean 'train_size'?"),
                          ({"stylebkd": {"train_size": 0}}, "'train_size': Input should be greater than 0"),
                          ({"stylebkd": {"dataset": "hsol"}}, "data_overrides.stylebkd.dataset: the dataset comes from 'datasets'")]:
        path.write_text(yaml.safe_dump({"output_dir": str(out), "attacks": ["badnets"], "data_overrides": over}))
        assert run_cli("run", path) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()  # nothing half-written


def test_changing_an_override_is_refused_on_an_existing_results_folder(tmp_path, capsys):
    from unbackdoor.artifacts import write_json

    out = tmp_path / "r"
    out.mkdir()
    write_json(out / "experiment.json", ExperimentConfig(output_dir=str(out), attacks=["badnets"]).model_dump())
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(out), "attacks": ["badnets"],
                                    "data_overrides": {"badnets": {"train_size": 50}}}))
    assert run_cli("run", path) == 2
    assert "sections ['data_overrides'] differ" in capsys.readouterr().err


def test_cpu_presets_give_the_weak_attacks_more_rows():
    hsol, ag = _preset("cpu-hsol"), _preset("cpu-agnews")
    assert _data_config(hsol, "badnets", "hsol").train_size == 1200
    assert _data_config(hsol, "stylebkd", "hsol").train_size is None
    assert _data_config(ag, "badnets", "agnews").train_size == 1200
    assert _data_config(ag, "hiddenkiller", "agnews").train_size is None
    assert _data_config(ag, "stylebkd", "agnews").train_size == 1200


def _result(method, m, size, rows, attack="stylebkd", seed=1):
    return {"dataset": "sst2", "attack": attack, "seed": seed, "method": method, "metrics": {"test": m},
            "poison_meta": {"target": 1, "label_names": NAMES, "mode": "replace", "rate": 0.5,
                            "config": {"data": {"train_size": size}}, "counts": {"train": rows}}}


def test_report_names_training_rows_only_where_a_dataset_mixes_sizes():
    rga = metrics(clean=[[242, 58], [25, 275]], triggered=[[240, 60], [33, 267]])
    one_size = [_result("retrain", RETRAIN, 1200, 1200, "badnets"), _result("rga", rga, 1200, 1200, "badnets"),
                _result("retrain", RETRAIN, 1200, 1200), _result("rga", rga, 1200, 1200)]
    assert {r["setting"] for r in summarise(one_size)} == {"replace 50%"}
    mixed = one_size[:2] + [_result("retrain", RETRAIN, None, 5568), _result("rga", rga, None, 5568)]
    rows = summarise(mixed)
    assert {(r["attack"], r["setting"]) for r in rows} == {("badnets", "replace 50%, 1,200 training rows"),
                                                          ("stylebkd", "replace 50%, 5,568 training rows")}
    assert "| stylebkd (replace 50%, 5,568 training rows) | RGA |" in table_markdown(rows)


def test_report_never_compares_a_method_with_a_retrain_of_another_size():
    # One attack run at two sizes (two results folders): each RGA row gets the ReTrain of its own size.
    weak_retrain = metrics(clean=[[200, 100], [100, 200]], triggered=[[200, 100], [100, 200]])
    rga = metrics(clean=[[242, 58], [25, 275]], triggered=[[240, 60], [33, 267]])
    rows = summarise([_result("retrain", RETRAIN, 1200, 1200), _result("rga", rga, 1200, 1200, seed=2),
                      _result("retrain", weak_retrain, None, 5568, seed=2), _result("rga", rga, None, 5568, seed=2)])
    big = next(r for r in rows if r["method"] == "rga" and "5,568" in r["setting"])
    small = next(r for r in rows if r["method"] == "rga" and "1,200" in r["setting"])
    assert round(big["delta_pacc"], 6) == round(abs(rga["pacc"] - weak_retrain["pacc"]), 6)
    assert small["delta_pacc"] is None  # its ReTrain (seed 1) is not the 5,568-row one of seed 2
