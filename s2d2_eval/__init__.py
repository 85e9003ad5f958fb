"""Evaluation layer for S2D2: an lm-eval model adapter, offline lm-eval tasks, Hydra run records,
tables and plots.

It sits on top of the decoders (`SDAR/`, `Fast-dLLM-v2/`) and never the other way round. Importing
this package is cheap (no torch, no lm-eval); `s2d2_eval.lm` registers the lm-eval model `s2d2` when
imported.
"""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
TASKS_DIR = PACKAGE_DIR / "tasks"
"""Pass this to lm-eval's `--include_path` (the CLI wrapper does it for you)."""

REPO_ROOT = PACKAGE_DIR.parent


def set_offline_defaults() -> None:
    """Offline unless the user says otherwise: HF_HUB_OFFLINE and HF_DATASETS_OFFLINE default to 1
    (export them as 0 for hub models and lm-eval's hub datasets). Call it before transformers,
    huggingface_hub or datasets are imported: they read these variables at import time."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
