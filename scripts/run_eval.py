"""Run ONE (model, decoding, task) evaluation through lm-eval and write ONE JSON record.

    python scripts/run_eval.py                                          # defaults: configs/eval.yaml
    python scripts/run_eval.py model=sdar_tiny decoding=dynamic decoding.params.confidence_threshold=0.8
    python scripts/run_eval.py task=synthetic_add task.limit=10 dry_run=true   # validate, show the record path
    python scripts/run_eval.py -m decoding=ar,dynamic,s2d2_config_a     # several runs, one record each
    python scripts/run_eval.py sweep=sdar hydra/launcher=slurm          # a sweep on Slurm (submitit)
    python scripts/run_eval.py model=fast_dllm_v2_7b decoding=fast_config_a   # Fast-dLLM v2: the fast_* presets

The record lands at <results_dir>/<sweep folder>/<model>/<task>/<decoding>-<hash of the resolved
config>.json and holds the resolved config, seed, git SHA, package versions, device, accuracy with its
standard error, NFE, TPF, tokens/s, wall time and acceptance stats. The sweep folder is <sweep_name>
for the runs of a published sweep's documented command, else <sweep_name>-<hash of the model, task
and its limit, seed and batching> (dry_run=true prints it). A run whose record exists is skipped
(overwrite=true reruns it), so a killed sweep resumes where it stopped. Tasks that execute
model-written code (HumanEval) need task.confirm_run_unsafe_code=true on the command line. In a
multirun a failing run does not stop the others; the failures are listed at the end (exit status 1).
Offline by default (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE = 1 unless already set).
"""

from __future__ import annotations

import difflib
import re
import sys
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
GROUP_CHOICE = re.compile(r"(model|decoding|task|sweep)=([^=]*)")


def check_group_choices(argv: list[str]) -> None:
    """`model=`, `decoding=`, `task=` and `sweep=` name YAML files of configs/<group>/ (several, comma-
    separated, in a multirun); a name with none is one line with the closest ones, before Hydra and torch
    load (Hydra would list every option and its search path)."""
    for arg in argv:
        match = GROUP_CHOICE.fullmatch(arg)
        if match is None:
            continue
        group, names = match.groups()
        if "(" in names or names == "null":  # Hydra's sweep functions (choice, glob, ...) and group deletion
            continue
        options = sorted(path.stem for path in (CONFIG_DIR / group).glob("*.yaml"))
        for name in names.split(","):
            if name not in options:
                close = difflib.get_close_matches(name, options, n=3, cutoff=0.5)
                hint = f"did you mean {' or '.join(close)}? " if close else ""
                sys.exit(f"run_eval.py: error: no {group} config {name!r} in configs/{group}/ ({hint}"
                         f"options: {', '.join(options)})")


if __name__ == "__main__":
    check_group_choices(sys.argv[1:])

from s2d2_eval import set_offline_defaults  # noqa: E402  (first: it must precede transformers/datasets imports)

set_offline_defaults()

import logging  # noqa: E402

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from s2d2_eval import sweeps  # noqa: E402
from s2d2_eval.config import register_configs  # noqa: E402
from s2d2_eval.runner import ConfigError, run  # noqa: E402

register_configs()
logger = logging.getLogger("run_eval")


@hydra.main(version_base="1.3", config_path="../configs", config_name="eval")
def main(cfg: DictConfig) -> str | None:
    """Hydra entry point; returns the record path (Hydra keeps it as the job's return value). A bad
    configuration exits with one line (status 2) instead of a traceback. In a multirun, any failure
    of this job is caught so the other jobs run: its line is printed now and listed again at the end
    (s2d2_eval.sweeps.FailureSummary), its traceback goes to the job's log."""
    try:
        return str(run(cfg))
    except Exception as err:  # noqa: BLE001 - one job's failure of any kind must not end a multirun
        if not sweeps.in_multirun():
            if isinstance(err, ConfigError):
                sys.exit(f"run_eval.py: error: {err}")
            raise
        if not isinstance(err, ConfigError):
            logger.exception("run failed")
        print(f"run_eval.py: error: {sweeps.note_failure(err)}", file=sys.stderr)
        return None


if __name__ == "__main__":
    main()
    if sweeps.FAILED_RUNS:
        sys.exit(1)
