"""Log filters for lm-eval notices that are wrong or useless for this repository's runs, shared by
`scripts/lm_eval_cli.py` and `run_eval.py` (stdlib only)."""

from __future__ import annotations

import logging
from pathlib import Path

from s2d2_eval import REPO_ROOT


def _not_custom_dataset_notice(record: logging.LogRecord) -> bool:
    """lm-eval warns, once per task with a `custom_dataset`, that kwargs can be passed via
    --metadata; every local task of this repository loads its data that way, and takes no kwargs."""
    return "Custom kwargs can be passed" not in record.getMessage()


def _not_repo_folder_notice(record: logging.LogRecord) -> bool:
    """lm-eval warns when a task name is also a folder in the working directory. Run from the repo
    root, `--tasks synthetic` meets the `synthetic/` package (the suite's generator, not a task
    folder), and lm-eval rightly uses the registered task: drop the notice in exactly that case."""
    message = record.getMessage()
    prefix = "A local directory named '"
    if not message.startswith(prefix):
        return True
    name = message[len(prefix):].split("'", 1)[0]
    return Path(name).resolve().parent != REPO_ROOT


_FILTERS = {"lm_eval.api.task": _not_custom_dataset_notice,
            "lm_eval.config.evaluate_config": _not_repo_folder_notice}


def silence_known_notices() -> None:
    """Install the filters (idempotent)."""
    for name, check in _FILTERS.items():
        target = logging.getLogger(name)
        if check not in target.filters:
            target.addFilter(check)
