"""Run records: one JSON file per (model, decoding, task) run, found by a path that is a pure function
of the resolved configuration (so a rerun of a killed sweep skips what is done and redoes what is
not, without duplicates).

Layout: `<results_dir>/<sweep folder>/<model>/<task>/<decoding>-<key>.json`, where `key` is a hash of
everything that changes the measurement (model, effective decoder keywords, task, seed, batch) and
the sweep folder is chosen by `s2d2_eval.runner.plan` (a published sweep's own folder, or one named
after the run's sweep group).

A record and its `.samples.jsonl` are one unit: both are written in full to temporary files first;
then the old record (the unit's commit marker) is removed, the samples file renamed into place, and
the record renamed last. A crash at any point leaves either the old unit, or the new one, or samples
without a record, which is redone. One process at a time writes a record (`record_lock`). Files are
created with the ordinary umask (0644 under the usual 022), not mkstemp's 0600.
Pure Python apart from the optional environment probe; the table and plot scripts import it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import math
import os
import platform
import secrets
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from common.cli import ScriptParser
from s2d2_eval import REPO_ROOT

SCHEMA = "s2d2-eval-record/1"
RECORD_SUFFIX = ".json"
SAMPLES_SUFFIX = ".samples.jsonl"
PACKAGES = ("torch", "transformers", "lm_eval", "hydra-core", "omegaconf", "datasets", "numpy", "s2d2",
            "accelerate", "tokenizers")


def run_key(identity: Mapping[str, Any]) -> str:
    """Short stable hash of the measurement-defining part of a resolved config."""
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


def samples_path(record: Path) -> Path:
    return record.with_name(record.name[: -len(RECORD_SUFFIX)] + SAMPLES_SUFFIX)


class RecordError(ValueError):
    """A file that should be a record is not a usable one (truncated, or missing a field)."""


def display_path(path: Path | str) -> str:
    """`path` relative to the repository root when it lies inside it (what tables and messages show,
    the same on every clone), else as given."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def _write_temporary(path: Path, text: str) -> Path:
    """`text` in a hidden temporary file beside `path`, flushed to disk. Created through os.open with
    mode 0666 so the umask applies, as for any other output (mkstemp would make it 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _sync_folder(folder: Path) -> None:
    """Make the renames in `folder` durable (a crash right after cannot undo them)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, fsync, then os.replace: readers see the old
    file or the whole new one, never a partial one (a killed run leaves at most a hidden .tmp)."""
    tmp = _write_temporary(path, text)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def atomic_write_json(path: Path, payload: Mapping[str, Any]) -> None:
    atomic_write_text(path, _json_text(payload))


def atomic_write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    atomic_write_text(path, _jsonl_text(rows))


def _json_text(payload: Mapping[str, Any]) -> str:
    return json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n"


def _jsonl_text(rows: Iterable[Mapping[str, Any]]) -> str:
    return "".join(json.dumps(row, default=str) + "\n" for row in rows)


def write_record(path: Path, record: Mapping[str, Any], samples: Iterable[Mapping[str, Any]] | None) -> None:
    """Write a record and its samples file as one unit (module docstring): both are complete on disk
    before either is renamed, and the record, renamed last, is what marks the unit as done. Without
    samples, a stale samples file of an earlier run is removed with the old record."""
    sidecar = samples_path(path)
    staged: list[tuple[Path, Path]] = []
    try:
        if samples is not None:
            staged.append((_write_temporary(sidecar, _jsonl_text(samples)), sidecar))
        staged.append((_write_temporary(path, _json_text(record)), path))
        path.unlink(missing_ok=True)
        if samples is None:
            sidecar.unlink(missing_ok=True)
        for tmp, final in staged:
            os.replace(tmp, final)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def lock_path(record: Path) -> Path:
    return record.with_name(f".{record.name}.lock")


@contextlib.contextmanager
def record_lock(record: Path) -> Iterator[bool]:
    """Hold the exclusive lock of one record (a hidden `.NAME.lock` beside it) for the duration of the
    block; yields True when another process held it first and this one waited. The lock file is
    removed on release; a waiter that then finds its file unlinked (or replaced) locks again, so two
    processes never both hold the lock of one record."""
    path = lock_path(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not waited:
                print(f"waiting: another run is writing {display_path(record)}", file=sys.stderr, flush=True)
            waited = True
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and current.st_ino == os.fstat(fd).st_ino:
            break
        os.close(fd)  # the holder released and removed this file: lock the current one
    try:
        yield waited
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def load_record(path: Path) -> dict[str, Any] | None:
    """The record at `path`, or None if there is no file. A file that is not a whole record
    (truncated JSON, another schema) raises RecordError naming it: it is reported, never silently
    redone or dropped."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise RecordError(f"{display_path(path)} is not a whole record (truncated? {err})") from None
    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        raise RecordError(f"{display_path(path)} is not a run record (schema {SCHEMA!r} expected)")
    return record


def records_from_command_line(description: str | None, out_help: str, argv: list[str] | None,
                              default_dir: Path) -> tuple[argparse.Namespace, Path, list[dict[str, Any]]]:
    """The shared command line of the report scripts: a sweep folder (searched recursively for
    records) and `--out`. Exits with a one-line error when the folder is missing, holds no records,
    or holds a file that is not a whole record."""
    parser = ScriptParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", nargs="?", default=str(default_dir),
                        help=f"folder searched recursively for records (default: {default_dir})")
    parser.add_argument("--out", default=None, help=out_help)
    args = parser.parse_args(argv)
    root = Path(args.sweep_dir)
    if not root.is_dir():
        parser.error(f"no such folder: {root}")
    try:
        records = iter_records(root)
    except RecordError as err:
        parser.error(str(err))
    if not records:
        parser.error(f"no run records under {root}")
    return args, root, records


def iter_records(root: Path) -> list[dict[str, Any]]:
    """Every record under `root`, each with its `_path`. Hidden files (temporaries, locks) are
    skipped; a `.json` file that is not a whole record raises RecordError naming every such file."""
    found, broken = [], []
    for path in sorted(root.rglob(f"*{RECORD_SUFFIX}")):
        if path.name.startswith("."):
            continue
        try:
            record = load_record(path)
        except RecordError as err:
            broken.append(str(err))
            continue
        if record is not None:
            record["_path"] = str(path)
            found.append(record)
    if broken:
        raise RecordError(f"{len(broken)} unusable record file(s): " + "; ".join(broken)
                          + " — delete them to rerun those configurations")
    return found


def accuracy_with_stderr(correct: float, n: int) -> tuple[float, float]:
    """Accuracy and its binomial standard error sqrt(a(1-a)/n) (docs/METHOD.md §5)."""
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
