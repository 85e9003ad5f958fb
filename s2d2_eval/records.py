"""Run records: one JSON file per (model, decoding, task) run, written atomically, found by a path
that is a pure function of the resolved configuration (so a rerun of a killed sweep skips what is
done and redoes what is not, without duplicates).

Layout: `<results_dir>/<sweep_name>/<model>/<task>/<decoding>-<key>.json`, where `key` is a hash of
everything that changes the measurement (model, effective decoder keywords, task, seed, batch).
Pure Python apart from the optional environment probe; the table and plot scripts import it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

SCHEMA = "s2d2-eval-record/1"
RECORD_SUFFIX = ".json"
SAMPLES_SUFFIX = ".samples.jsonl"
PACKAGES = ("torch", "transformers", "lm_eval", "hydra-core", "omegaconf", "datasets", "numpy", "s2d2",
            "accelerate", "tokenizers")


def run_key(identity: Mapping[str, Any]) -> str:
    """Short stable hash of the measurement-defining part of a resolved config."""
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


def record_path(results_dir: Path, sweep_name: str, model: str, task: str, decoding: str, key: str) -> Path:
    return results_dir / sweep_name / model / task / f"{decoding}-{key}{RECORD_SUFFIX}"


def samples_path(record: Path) -> Path:
    return record.with_name(record.name[: -len(RECORD_SUFFIX)] + SAMPLES_SUFFIX)


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, fsync, then os.replace: readers see the old
    file or the whole new one, never a partial one (a killed run leaves at most a hidden .tmp)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, payload: Mapping[str, Any]) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(row, default=str) + "\n" for row in rows))


def load_record(path: Path) -> dict[str, Any] | None:
    """The record at `path`, or None if absent or unreadable (then the run is redone)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and record.get("schema") == SCHEMA else None


def records_from_command_line(description: str | None, out_help: str, argv: list[str] | None,
                              default_dir: Path) -> tuple[argparse.Namespace, Path, list[dict[str, Any]]]:
    """The shared command line of the report scripts: a sweep folder (searched recursively for
    records) and `--out`. Exits with a one-line error when the folder or its records are missing."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", nargs="?", default=str(default_dir),
                        help=f"folder searched recursively for records (default: {default_dir})")
    parser.add_argument("--out", default=None, help=out_help)
    args = parser.parse_args(argv)
    root = Path(args.sweep_dir)
    if not root.is_dir():
        parser.error(f"no such folder: {root}")
    records = iter_records(root)
    if not records:
        parser.error(f"no run records under {root}")
    return args, root, records


def iter_records(root: Path) -> list[dict[str, Any]]:
    """Every valid record under `root` (hidden temporary files skipped), each with its `_path`."""
    found = []
    for path in sorted(root.rglob(f"*{RECORD_SUFFIX}")):
        if path.name.startswith("."):
            continue
        record = load_record(path)
        if record is not None:
            record["_path"] = str(path)
            found.append(record)
    return found


def accuracy_with_stderr(correct: float, n: int) -> tuple[float, float]:
    """Accuracy and its binomial standard error sqrt(a(1-a)/n) (MEASURING.md)."""
    if n <= 0:
        return 0.0, 0.0
    a = correct / n
    return a, math.sqrt(a * (1.0 - a) / n)


def git_state(repo: Path) -> dict[str, Any]:
    """Commit SHA and whether tracked files differ from it (None outside a git checkout)."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"sha": sha, "dirty": bool(status) if status is not None else None}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_info(requested: str) -> dict[str, Any]:
    """What the run actually ran on (timings are only comparable on the same device)."""
    import torch

    info: dict[str, Any] = {"requested": requested, "torch_threads": torch.get_num_threads(),
                            "cpu_count": os.cpu_count(), "machine": platform.machine(),
                            "processor": platform.processor() or None}
    if str(requested).startswith("cuda") and torch.cuda.is_available():
        info.update(type="cuda", name=torch.cuda.get_device_name(), cuda=torch.version.cuda)
    else:
        info.update(type="cpu", name=platform.processor() or platform.machine())
    return info
