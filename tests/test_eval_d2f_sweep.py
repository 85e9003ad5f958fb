"""The D2F sweeps (scripts/sweep_d2f.sh): each family's sweep holds AR mode, `d2f` over a threshold grid,
S2D2 with every routing policy and its exact variant; the documented commands plan every run into
results/d2f_llada and results/d2f_dream and any other run into a folder of its own; the script picks the
Dream sweep from `model=d2f_dream*`; a sweep stage on a random pair writes records, the exact S2D2
completions equal AR mode's; every run of a sweep gets a label of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from s2d2_eval.config import register_configs
from s2d2_eval.records import iter_records, samples_path
from s2d2_eval.runner import plan
from s2d2_eval.sweeps import PUBLISHED_SWEEPS, documented_command, expand_multirun, published_runs

REPO = Path(__file__).resolve().parent.parent
FAMILIES = ("d2f_llada", "d2f_dream")
POLICIES = {"mask_span_length", "score_threshold", "score_hysteresis", "contextual_bandit_ucb"}
GRID = {0.5, 0.7, 0.8, 0.9, 0.95, 0.99}  # stage 1's d2f_paper (0.9) and stage 2's grid
register_configs()


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A folder holding random pairs where the tiny model configs look (models/d2f-*-tiny/{base,lora}), so
    that, run from it, the documented configuration plans as it will once the real pairs are trained."""
    from s2d2_eval.testing import build_random_d2f_model

    folder = tmp_path_factory.mktemp("d2f_sweep")
    for family in FAMILIES:
        build_random_d2f_model(folder / "models" / f"{family.replace('_', '-')}-tiny", family=family)
    return folder


def _documented_jobs(family: str) -> list:
    """The jobs of the documented command, with the arguments the script passes on (model=d2f_dream_tiny)."""
    extra = tuple(documented_command(family).split()[2:])
    return [cfg for stage in PUBLISHED_SWEEPS[family] for cfg in expand_multirun((*stage, *extra))]


@pytest.mark.parametrize("family", FAMILIES)
def test_sweep_holds_ar_d2f_grid_and_every_s2d2_policy(family):
    jobs = _documented_jobs(family)
    assert documented_command(family) == "bash scripts/sweep_d2f.sh" + (" model=d2f_dream_tiny" if "dream" in family else "")
    assert {(cfg.model.name, cfg.sweep_name) for cfg in jobs} == {(f"{family}_tiny", family)}
    by_kind = {kind: [cfg for cfg in jobs if cfg.decoding.kind == kind] for kind in ("ar", "dynamic", "s2d2")}
    assert len(jobs) == 12 and sum(map(len, by_kind.values())) == 12
    (ar,) = by_kind["ar"]
    assert ar.decoding.params.block_size == 1
    assert {cfg.decoding.params.skip_threshold for cfg in by_kind["dynamic"]} == GRID
    assert {cfg.decoding.params.block_size for cfg in jobs if cfg.decoding.kind != "ar"} == {8}
    s2d2 = {cfg.decoding.name: cfg.decoding.params for cfg in by_kind["s2d2"]}
    assert {p.do_verify_policy for p in s2d2.values()} == POLICIES
    exact = s2d2["d2f_s2d2_greedy"]  # the settings under which S2D2 is AR greedy (tests/test_d2f_decoding.py)
    assert (exact.acceptance, exact.do_verify_policy, exact.min_ssd_span_length, exact.cache_ver,
            exact.decoded_token_threshold) == ("greedy_exact", "mask_span_length", 1, True, 1.0)
    assert s2d2["d2f_s2d2"].get("acceptance") is None  # the paper's: stochastic (the config's default)


@pytest.mark.parametrize("family", FAMILIES)
def test_documented_sweep_plans_into_the_published_folder(family, root, monkeypatch):
    monkeypatch.chdir(root)
    plans = [plan(cfg) for cfg in _documented_jobs(family)]
    assert all(p.published and p.sweep_dir == REPO / "results" / family for p in plans)
    assert len({p.record for p in plans}) == len(plans) == len(published_runs(family)) == 12
    labels = [p.label for p in plans]
    assert len(set(labels)) == 12  # one table row per run
    assert sorted(label for label in labels if label.startswith("d2f ")) == [
        f"d2f τ={t:g} B=8 τ_add=0.1 τ_act=0.95" for t in sorted(GRID)]
    assert {label for label in labels if label.startswith("S2D2")} == {
        "S2D2 span B=8", "S2D2 score_threshold B=8", "S2D2 hysteresis B=8", "S2D2 ucb B=8", "S2D2 greedy B=8"}


@pytest.mark.parametrize("family, override", [
    ("d2f_llada", "task.limit=2"),
    # another pair under the tiny name (a base and an adapter that do not fit each other fail to plan at all)
    ("d2f_llada", "model.pretrained={root}/models/d2f-dream-tiny/base model.lora_dir={root}/models/d2f-dream-tiny/lora"),
    ("d2f_llada", "model.merge_lora=true"),
    ("d2f_llada", "model=d2f_dream_tiny"),  # run_eval.py with the other family's model: not the Dream sweep
    ("d2f_dream", "decoding.params.temperature=1.0"),
    ("d2f_dream", "seed=7"),
])
def test_any_other_run_goes_to_its_own_folder(family, override, root, monkeypatch):
    monkeypatch.chdir(root)
    jobs = expand_multirun((f"sweep={family}", *override.format(root=root).split()))
    plans = [plan(cfg) for cfg in jobs]
    assert len(plans) == 7 and not any(p.published for p in plans)
    (folder,) = {p.sweep_dir for p in plans}
    assert folder.parent == REPO / "results" and folder.name.startswith(f"{family}-") and not folder.exists()


STUB = """#!/usr/bin/env bash
echo "$*" >> "$STUB_LOG"
if [[ " $* " == *" dry_run=true "* ]]; then echo "sweep_dir: $STUB_DIR"; fi
"""


@pytest.mark.parametrize("args, sweep", [
    ([], "d2f_llada"),
    (["model=d2f_dream_tiny"], "d2f_dream"),
    (["task=gsm8k", "model=d2f_dream_7b"], "d2f_dream"),
    (["model=d2f_llada_8b"], "d2f_llada"),
    (["model.pretrained=/x/base", "model.lora_dir=/x/lora"], "d2f_llada"),
])
def test_script_picks_the_family_sweep_and_passes_every_override(args, sweep, tmp_path):
    """sweep_d2f.sh's calls, recorded by a stand-in interpreter: the dry run, both stages with the
    family's sweep configs and the arguments unchanged, then the table and the plots of the dry run's folder."""
    stub = tmp_path / "python"
    stub.write_text(STUB)
    stub.chmod(0o755)
    log = tmp_path / "calls.txt"
    env = {**os.environ, "PYTHON": str(stub), "VIRTUAL_ENV": str(tmp_path), "STUB_LOG": str(log),
           "STUB_DIR": str(tmp_path / "sweep")}
    done = subprocess.run(["bash", str(REPO / "scripts" / "sweep_d2f.sh"), *args], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rest = " ".join(args)
    assert log.read_text().splitlines() == [
        f"scripts/run_eval.py sweep={sweep} hydra.mode=RUN dry_run=true {rest}".rstrip(),
        f"scripts/run_eval.py sweep={sweep} {rest}".rstrip(),
        f"scripts/run_eval.py sweep={sweep}_threshold_grid {rest}".rstrip(),
        f"scripts/make_table.py {tmp_path / 'sweep'}",
        f"scripts/plot_frontier.py {tmp_path / 'sweep'}",
    ]


def _completions(record: dict) -> list[str]:
    with samples_path(Path(record["_path"])).open() as f:
        return [row["completion"] for row in sorted(map(json.loads, f), key=lambda r: (r["task"], r["doc_id"]))]


@pytest.mark.parametrize("family", FAMILIES)
def test_sweep_stage_on_a_random_pair_writes_records(family, root, tmp_path):
    """Stage 1 of the sweep, cut to AR mode and exact S2D2, end to end (Hydra multirun, lm-eval, the pair
    loaded with its adapter): two records in the run's own folder, and exact S2D2 writes AR mode's tokens."""
    base, lora = root / "models" / f"{family.replace('_', '-')}-tiny" / "base", root / "models" / f"{family.replace('_', '-')}-tiny" / "lora"
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "run_eval.py"), f"sweep={family}", "decoding=d2f_ar,d2f_s2d2_greedy",
         f"model.pretrained={base}", f"model.lora_dir={lora}", "task=synthetic_add", "task.limit=3",
         f"results_dir={tmp_path}", f"hydra.sweep.dir={tmp_path / 'multirun'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (folder,) = [p for p in tmp_path.iterdir() if p.name.startswith(f"{family}-")]
    records = {r["decoding"]["name"]: r for r in iter_records(folder)}
    assert set(records) == {"d2f_ar", "d2f_s2d2_greedy"}
    ar, exact = records["d2f_ar"], records["d2f_s2d2_greedy"]
    assert (ar["label"], exact["label"]) == ("AR mode (B=1)", "S2D2 greedy B=8")
    assert all(r["model"]["lora_dir"] == str(lora) and r["sweep_name"] == family for r in records.values())
    assert exact["metrics"]["acceptance"]["verify_fraction"] == 1.0
    assert ar["metrics"]["n"] == exact["metrics"]["n"] == 3
    assert _completions(exact) == _completions(ar) and all(_completions(ar))
