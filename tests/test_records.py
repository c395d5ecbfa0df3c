"""Records: atomic, hashed, and loaded into one tidy row per run; corrupt files are skipped by name."""
import json
import logging

import pytest

from harness import load_results, records


def record(status="ok", d_model=64, loss=2.5):
    return {"config": {"model": {"d_model": d_model}, "resume": True}, "config_hash": records.config_hash({"model": {"d_model": d_model}}),
            "status": status, "error": None, "metrics": {"val_loss": loss}, "curve": [{"tokens": 1, "val_loss": loss}],
            "env": {"torch": "x"}}


def test_config_hash_ignores_reporting_keys_only():
    base = {"model": {"d_model": 64}, "seed": 0}
    assert records.config_hash({**base, "resume": False, "progress": "off"}) == records.config_hash(base)
    assert records.config_hash({**base, "seed": 1}) != records.config_hash(base)


def test_write_is_atomic_and_leaves_no_temporaries(tmp_path):
    path = records.write_record(tmp_path / "run", record())
    assert json.loads(path.read_text())["status"] == "ok"
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["record.json"]


def test_unknown_status_is_refused(tmp_path):
    with pytest.raises(ValueError, match="record status 'done'"):
        records.write_record(tmp_path, record(status="done"))


def test_load_results_flattens_and_skips_corrupt_files(tmp_path, caplog):
    records.write_record(tmp_path / "a", record(d_model=64, loss=2.5))
    records.write_record(tmp_path / "b" / "nested", record(d_model=128, loss=2.1, status="diverged"))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "record.json").write_text('{"config": {"model": ')  # truncated
    with caplog.at_level(logging.WARNING):
        df = load_results(tmp_path)
    assert sorted(df["model.d_model"]) == [64, 128]
    assert set(df["status"]) == {"ok", "diverged"}
    assert sorted(df["metrics.val_loss"]) == [2.1, 2.5]
    assert "c/record.json" in caplog.text


def test_load_results_takes_globs_and_lists(tmp_path):
    for name in ("x1", "x2", "y1"):
        records.write_record(tmp_path / name, record())
    assert len(load_results(str(tmp_path / "x*"))) == 2
    assert len(load_results([tmp_path / "x1", tmp_path / "y1" / "record.json"])) == 2


def test_find_ok_record_matches_hash_and_status(tmp_path):
    ok = record()
    records.write_record(tmp_path / "0", ok)
    records.write_record(tmp_path / "1", record(d_model=8, status="failed"))
    assert records.find_ok_record(tmp_path, ok["config_hash"]) == tmp_path / "0" / "record.json"
    assert records.find_ok_record(tmp_path, record(d_model=8)["config_hash"]) is None


def test_a_killed_write_leaves_temporaries_that_the_next_job_clears(tmp_path):
    for name in (records.RECORD_NAME, records.MODEL_NAME):
        (tmp_path / f".{name}.abc123.tmp").write_bytes(b"half written")
    (tmp_path / "keep.tmp").write_text("not ours")
    records.remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.tmp"]


def test_a_corrupt_record_is_no_record_for_resume(tmp_path):
    ok = record()
    (tmp_path / ok["config_hash"]).mkdir()
    (tmp_path / ok["config_hash"] / "record.json").write_text('{"status": "ok", "config": {')  # cut mid-write by hand
    assert records.find_ok_record(tmp_path, ok["config_hash"]) is None
    records.write_record(tmp_path / ok["config_hash"], ok)
    assert records.find_ok_record(tmp_path, ok["config_hash"]) == tmp_path / ok["config_hash"] / "record.json"


def test_a_sweep_points_directory_is_its_config_hash():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from harness.config import CONF_DIR
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose("config", overrides=["model.d_model=64"], return_hydra_config=True)
    task = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
    assert records.point_dir_name(_root_=cfg) == records.config_hash(OmegaConf.to_container(task, resolve=True))
    assert OmegaConf.select(cfg, "hydra.sweep.subdir") == records.point_dir_name(_root_=cfg)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        other = compose("config", overrides=["model.d_model=32"], return_hydra_config=True)
        reporting = compose("config", overrides=["model.d_model=64", "progress=off", "resume=false"], return_hydra_config=True)
    assert records.point_dir_name(_root_=other) != records.point_dir_name(_root_=cfg)
    assert records.point_dir_name(_root_=reporting) == records.point_dir_name(_root_=cfg)
