"""Sweeps as Hydra runs them: which runs the published result folders hold, and a multirun in which
one failing job neither stops the others nor goes unreported.

Published folders. `results/sdar`, `results/sdar_t1` and `results/fast_dllm_v2` are tracked: their
tables and plots are the README's numbers. A run may write there only if it is one of the jobs of the
documented command that made the folder (`PUBLISHED_SWEEPS`), compared on the resolved configuration,
not on how it was spelled. Every other run, e.g. `bash scripts/sweep_sdar.sh task.limit=25`, goes to
a folder named after its sweep group (`s2d2_eval.runner.plan`), so it can neither overwrite a
published record nor add rows to a published table. The set of published jobs is enumerated the way
Hydra's basic sweeper expands a multirun (the sweep config's `hydra.sweeper.params`, crossed), so
adding a decoder to `configs/sweep/sdar.yaml` adds it to the published set with no second list.

Failures. `run_eval.py` catches a job's exception in a multirun, prints its one-line reason, logs the
traceback to the job's log, and leaves a note in the job's output folder; `FailureSummary` (a Hydra
callback set in `configs/eval.yaml`) lists the notes when the multirun ends, and run_eval.py then
exits with status 1. Notes are files, so jobs run by the submitit launchers (other processes, other
machines) are listed too.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict

from s2d2_eval import REPO_ROOT

CONFIG_DIR = REPO_ROOT / "configs"

_T1 = ("sweep_name=sdar_t1", "decoding.params.do_sample=true", "decoding.params.temperature=1.0")
PUBLISHED_SWEEPS: dict[str, tuple[tuple[str, ...], ...]] = {
    "sdar": (("sweep=sdar",), ("sweep=sdar_dynamic_grid",)),
    "sdar_t1": (("sweep=sdar", *_T1), ("sweep=sdar_dynamic_grid", *_T1)),
    "fast_dllm_v2": (("sweep=fast_dllm_v2",), ("sweep=fast_dllm_v2_threshold_grid",)),
    "sdar_batch16": (("sweep=sdar_batch16",), ("sweep=sdar_batch16_grid",)),
    "fast_dllm_v2_batch16": (("sweep=fast_dllm_v2_batch16",), ("sweep=fast_dllm_v2_batch16_grid",)),
    # scripts/sweep_d2f.sh (d2f_dream: with model=d2f_dream_tiny, which selects the d2f_dream sweep configs)
    "d2f_llada": (("sweep=d2f_llada",), ("sweep=d2f_llada_threshold_grid",)),
    "d2f_dream": (("sweep=d2f_dream",), ("sweep=d2f_dream_threshold_grid",)),
    "llada2": (("sweep=llada2",), ("sweep=llada2_threshold_grid",)),
}
"""Published folder (= sweep_name) -> the run_eval.py overrides of each stage of the documented
command that writes it (scripts/sweep_sdar.sh, the same with the T=1 overrides, scripts/sweep_fast_dllm_v2.sh,
scripts/sweep_batch16.sh for the two *_batch16 folders, scripts/sweep_llada2.sh)."""

FAILURE_NOTE = "run_eval_failure.txt"
"""Name of the note a failed multirun job leaves in its output folder."""


def _loader() -> Any:
    """A Hydra config loader of `configs/` that needs no global Hydra state, so it also works inside
    a running `@hydra.main` job (where `hydra.initialize` refuses to run)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path

    from s2d2_eval.config import register_configs

    register_configs()
    return ConfigLoaderImpl(config_search_path=create_config_search_path(str(CONFIG_DIR)))


def expand_multirun(overrides: tuple[str, ...]) -> list[DictConfig]:
    """The job configs of `run_eval.py -m <overrides>` under the basic sweeper: the sweep config's
    `hydra.sweeper.params` and the command line's overrides, a later one replacing an earlier one
    of the same key, crossed. Returned without their `hydra` node, as a job sees its config."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    loader = _loader()
    base = loader.load_configuration("eval", list(overrides), run_mode=RunMode.MULTIRUN, from_shell=False)
    params = base.hydra.sweeper.params or {}
    parsed = OverridesParser.create().parse_overrides([*(f"{k}={v}" for k, v in params.items()), *overrides])
    (jobs,) = BasicSweeper.split_arguments(parsed, None)
    configs = []
    for job in jobs:
        cfg = loader.load_configuration("eval", job, run_mode=RunMode.RUN, from_shell=False)
        with open_dict(cfg):
            del cfg["hydra"]
        configs.append(cfg)
    return configs


@functools.lru_cache(maxsize=None)
def published_runs(sweep_name: str) -> frozenset[tuple[str, str]]:
    """(group id, record file name) of every job of the documented command of `sweep_name`'s
    published folder; empty for any other sweep name. Cached: a multirun asks once per process."""
    from s2d2_eval.runner import run_slot

    return frozenset(run_slot(cfg) for stage in PUBLISHED_SWEEPS.get(sweep_name, ()) for cfg in expand_multirun(stage))


def documented_command(sweep_name: str) -> str:
    """The command line that writes a published folder, for messages."""
    stage, *_ = PUBLISHED_SWEEPS[sweep_name]
    if sweep_name.endswith("_batch16"):
        return "bash scripts/sweep_batch16.sh"
    if stage[0].startswith("sweep=d2f_"):  # sweep_d2f.sh picks the Dream sweep configs from model=d2f_dream*
        model = () if stage[0] == "sweep=d2f_llada" else (f"model={stage[0].removeprefix('sweep=')}_tiny",)
        return " ".join(["bash", "scripts/sweep_d2f.sh", *model, *stage[1:]])
    script = ("sweep_fast_dllm_v2.sh" if stage[0].startswith("sweep=fast")
              else "sweep_llada2.sh" if stage[0].startswith("sweep=llada2") else "sweep_sdar.sh")
    return " ".join(["bash", f"scripts/{script}", *stage[1:]])


def in_multirun() -> bool:
    """True inside a job of a Hydra multirun (`-m`, or a sweep config's `hydra.mode: MULTIRUN`)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def note_failure(error: BaseException) -> str:
    """Leave the one-line reason of a failed multirun job in its output folder and return the line."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    overrides = " ".join(hydra_cfg.overrides.task)
    line = f"job {hydra_cfg.job.num} ({overrides}): {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    note = Path(hydra_cfg.runtime.output_dir) / FAILURE_NOTE
    note.parent.mkdir(parents=True, exist_ok=True)
    note.write_text(line + "\n")
    return line


FAILED_RUNS: list[str] = []
"""The failure lines of the multirun that just ended in this process (set by FailureSummary)."""


class FailureSummary(Callback):
    """Lists the failed jobs of a multirun when it ends (their notes, see the module docstring)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        FAILED_RUNS.clear()
        for stale in Path(str(config.hydra.sweep.dir)).glob(f"*/{FAILURE_NOTE}"):
            stale.unlink()  # a sweep folder reused by a rerun: old notes are not this run's failures

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        notes = sorted(Path(str(config.hydra.sweep.dir)).glob(f"*/{FAILURE_NOTE}"),
                       key=lambda p: (len(p.parent.name), p.parent.name))
        FAILED_RUNS[:] = [note.read_text().strip() for note in notes]
        if FAILED_RUNS:
            print(f"run_eval.py: {len(FAILED_RUNS)} run(s) of this multirun failed (the others finished):",
                  file=sys.stderr)
            for line in FAILED_RUNS:
                print(f"  {line}", file=sys.stderr)
