"""Published results stay safe: the documented sweep commands find every committed record where it is
(so a rerun skips them all), any other run lands in a folder of its own, and tables and plots refuse
to mix models, tasks, sample counts or sweeps, naming the files; tracked tables name records by
repo-relative paths and are exactly what make_table.py writes from the committed records."""

from __future__ import annotations

import copy
import csv
import io
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from s2d2_eval.config import register_configs
from s2d2_eval.records import atomic_write_json, iter_records
from s2d2_eval.report import group_points
from s2d2_eval.runner import plan
from s2d2_eval.sweeps import PUBLISHED_SWEEPS, documented_command, expand_multirun, published_runs

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results"
register_configs()


def _compose(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose(config_name="eval", overrides=overrides)


def _skip_unpublished(sweep_name: str) -> None:
    """A registered sweep whose folder is not committed yet (its model is still to be trained) has no
    records to check; tests/test_eval_d2f_sweep.py checks where its documented command plans to write."""
    if not RESULTS.joinpath(sweep_name).is_dir():
        pytest.skip(f"results/{sweep_name} is not published yet (made by `{documented_command(sweep_name)}`)")


@pytest.mark.parametrize("sweep_name", sorted(PUBLISHED_SWEEPS))
def test_documented_sweep_finds_exactly_the_committed_records(sweep_name):
    """Every job of the documented command plans to a committed record of its published folder, and
    the folder holds no record that the command would not make: a rerun skips them all."""
    _skip_unpublished(sweep_name)
    planned = []
    for stage in PUBLISHED_SWEEPS[sweep_name]:
        for cfg in expand_multirun(stage):
            run_plan = plan(cfg)
            assert run_plan.published, (sweep_name, cfg.decoding.name)
            assert run_plan.sweep_dir == RESULTS / sweep_name
            planned.append(run_plan.record)
    committed = sorted(RESULTS.joinpath(sweep_name).rglob("*.json"))
    assert sorted(planned) == committed and len(set(planned)) == len(planned)
    assert len(published_runs(sweep_name)) == len(planned)


@pytest.fixture(scope="module")
def random_model_dir(tmp_path_factory) -> Path:
    from s2d2_eval.testing import build_random_tiny_model

    return build_random_tiny_model(tmp_path_factory.mktemp("rand_tiny"))


@pytest.mark.parametrize("override", [
    "task.limit=25",                    # fewer items (EVALUATION.md's quick look)
    "model.pretrained={random_model}",  # a random model under the trained one's name
    "decoding.params.temperature=1.0",  # a decoding override without its own sweep_name
    "block_length=4",                   # another block length (AR mode itself is unchanged by it)
    "seed=7",
])
def test_any_other_run_of_a_published_sweep_goes_to_its_own_folder(override, random_model_dir):
    jobs = expand_multirun(("sweep=sdar", override.format(random_model=random_model_dir)))
    assert len(jobs) == 9
    folders = set()
    for cfg in jobs:
        run_plan = plan(cfg)
        assert not run_plan.published, (override, cfg.decoding.name)
        folders.add(run_plan.sweep_dir)
    (folder,) = folders  # one sweep, one folder: its table holds all of its runs, AR mode included
    assert folder.parent == RESULTS and folder.name.startswith("sdar-") and not folder.exists()


def test_ad_hoc_folder_is_a_function_of_model_task_and_limit(tmp_path):
    base = ["decoding=dynamic", f"results_dir={tmp_path}"]
    one = plan(_compose([*base, "task.limit=2"])).sweep_dir
    assert one == plan(_compose([*base, "task.limit=2", "decoding=ar"])).sweep_dir  # decoders share it
    assert one != plan(_compose([*base, "task.limit=3"])).sweep_dir
    assert one != plan(_compose([*base, "task.limit=2", "task=synthetic_add"])).sweep_dir
    assert one != plan(_compose([*base, "task.limit=2", "model.dtype=bfloat16"])).sweep_dir
    assert one.parent == tmp_path and one.name.startswith("default-")


def test_published_routing_does_not_depend_on_results_dir(tmp_path):
    run_plan = plan(_compose(["sweep=sdar", "decoding=ar", f"results_dir={tmp_path}"]))
    assert run_plan.published and run_plan.sweep_dir == tmp_path / "sdar"


def test_dry_run_names_the_folder_and_why_it_is_not_the_published_one(tmp_path):
    from s2d2_eval.runner import run

    documented = documented_command("sdar_t1")
    assert documented == ("bash scripts/sweep_sdar.sh sweep_name=sdar_t1 decoding.params.do_sample=true "
                          "decoding.params.temperature=1.0")
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "run_eval.py"), "sweep=sdar", "hydra.mode=RUN",
                           "dry_run=true", "task.limit=25", f"results_dir={tmp_path}",
                           f"hydra.run.dir={tmp_path / 'outputs'}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    assert Path(lines["sweep_dir"]).parent == tmp_path and Path(lines["sweep_dir"]).name.startswith("sdar-")
    assert "bash scripts/sweep_sdar.sh" in lines["note"]
    assert run(_compose(["sweep=sdar", "dry_run=true", f"results_dir={tmp_path}"])).parent.parent.parent == \
        tmp_path / "sdar"


# --- tables and plots ------------------------------------------------------------------------------------

def _published_records(sweep_name: str) -> list[dict]:
    return iter_records(RESULTS / sweep_name)


def _write(folder: Path, records: list[dict]) -> None:
    for record in records:
        record = {k: v for k, v in record.items() if k != "_path"}
        atomic_write_json(folder / record["model"]["name"] / record["task"]["name"]
                          / f"{record['decoding']['name']}-{record['key']}.json", record)


@pytest.mark.parametrize("change, needle", [
    (lambda r: r["task"].update(limit=25), "task (and its limit) (limit: None vs 25)"),
    (lambda r: r["model"].update(pretrained="/tmp/rand_fast"), "model (pretrained: 'models/sdar-tiny' vs '/tmp/rand_fast')"),
    (lambda r: r["metrics"].update(n=20), "sample count n (400 vs 20)"),
    (lambda r: r.update(sweep_name="sdar_t1"), "sweep_name ('sdar' vs 'sdar_t1')"),
])
def test_table_and_plot_refuse_to_mix_runs_naming_the_files(tmp_path, change, needle):
    records = copy.deepcopy(_published_records("sdar")[:3])
    odd = records[2]
    change(odd)
    odd["key"] = "0000000000"
    _write(tmp_path, records)
    for script in ("make_table.py", "plot_frontier.py"):
        done = subprocess.run([sys.executable, str(REPO / "scripts" / script), str(tmp_path), "--out",
                               str(tmp_path / "out" / "table")], capture_output=True, text=True, timeout=300)
        assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
        (line,) = done.stderr.strip().splitlines()
        assert needle in line and f"{odd['decoding']['name']}-0000000000.json" in line, line
    assert not (tmp_path / "out").exists()


def test_record_without_a_metric_is_named(tmp_path):
    records = copy.deepcopy(_published_records("sdar")[:2])
    del records[1]["metrics"]["tpf"]
    _write(tmp_path, records)
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "make_table.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert f"{records[1]['decoding']['name']}-{records[1]['key']}.json has no 'tpf'" in done.stderr


def test_truncated_record_is_named_by_make_table(tmp_path):
    records = copy.deepcopy(_published_records("sdar")[:2])
    _write(tmp_path, records)
    victim = next(tmp_path.rglob("*.json"))
    victim.write_text(victim.read_text()[:200])
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "make_table.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert f"{victim} is not a whole record" in done.stderr


@pytest.mark.parametrize("sweep_name", sorted(PUBLISHED_SWEEPS))
def test_tracked_tables_are_make_table_output_with_repo_relative_paths(sweep_name, tmp_path):
    _skip_unpublished(sweep_name)
    folder = RESULTS / sweep_name
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "make_table.py"), str(folder), "--out",
                           str(tmp_path / "table")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "table.md").read_text() == (folder / "table.md").read_text()
    assert (tmp_path / "table.csv").read_text() == (folder / "table.csv").read_text()
    rows = list(csv.DictReader(io.StringIO((folder / "table.csv").read_text())))
    assert rows and all(row["record"].startswith(f"results/{sweep_name}/") for row in rows)
    assert all((REPO / row["record"]).is_file() for row in rows)


def test_group_points_accepts_one_published_sweep():
    groups = group_points(_published_records("fast_dllm_v2"))
    assert list(groups) == [("fast_dllm_v2_tiny", "synthetic")] and len(groups["fast_dllm_v2_tiny", "synthetic"]) == 13
    assert all(p.path.startswith("results/fast_dllm_v2/") for p in groups["fast_dllm_v2_tiny", "synthetic"])
