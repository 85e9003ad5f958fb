"""The stock lm-eval command line (0.4.13) with the `s2d2` model registered and this repository's
offline tasks on the task path.

lm-eval has no plugin discovery, so this wrapper imports `s2d2_eval.lm` (which registers the model)
and then runs `lm_eval.__main__.cli_evaluate()`. Every lm-eval flag works as documented; the only
addition is that `--include_path s2d2_eval/tasks` is appended when not given. Offline by default.
lm-eval notices that are wrong for this repository's tasks are filtered out (s2d2_eval/logs.py).

    python scripts/lm_eval_cli.py --model s2d2 --device cpu --apply_chat_template \
        --model_args pretrained=models/sdar-tiny,block_length=8,denoising_steps=8,cache_ver=true,draft_ver=true \
        --tasks synthetic --limit 10 --log_samples --output_path results/lm_eval
"""

from __future__ import annotations

import re
import sys

from s2d2_eval import TASKS_DIR, set_offline_defaults  # first: it must precede transformers/datasets imports

set_offline_defaults()

import lm_eval.__main__  # noqa: E402
from lm_eval._cli import HarnessCLI  # noqa: E402

from s2d2_eval.lm import S2D2LM  # noqa: E402  (importing it registers the lm-eval model "s2d2")
from s2d2_eval.logs import silence_known_notices  # noqa: E402
from s2d2_eval.model_args import ModelArgError  # noqa: E402


def with_task_path(argv: list[str]) -> list[str]:
    """argv plus `--include_path <s2d2_eval/tasks>` unless an include path is already given or
    there is nothing to run (bare `--help`). All three subcommands (run, ls, validate) accept it."""
    if any(arg == "--include_path" or arg.startswith("--include_path=") for arg in argv):
        return argv
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        return argv
    return [*argv, "--include_path", str(TASKS_DIR)]


def check_s2d2_model_args() -> None:
    """Parse the command line with lm-eval's own parser and, for `--model s2d2`, validate the
    model_args and `--batch_size` now: lm-eval would otherwise index every built-in task (~20 s)
    before the model's constructor could reject a typo (with a traceback). Also warn when the
    synthetic tasks run without the chat template."""
    argv = list(sys.argv)
    try:
        args = HarnessCLI().parse_args()
    finally:
        sys.argv = argv
    tasks = ",".join(getattr(args, "tasks", None) or [])
    if "synthetic" in tasks and not getattr(args, "apply_chat_template", False):
        print("lm_eval_cli.py: warning: the synthetic tasks give the raw item prompt; add --apply_chat_template "
              "so the model sees the chat format it was trained on", file=sys.stderr)
    if getattr(args, "model", None) != "s2d2":
        return
    model_args = dict(getattr(args, "model_args", None) or {})
    pretrained = model_args.pop("pretrained", None)
    # Validation only: the device is resolved once, when lm-eval builds the model with --device.
    model_args["device"] = "cpu"
    if getattr(args, "batch_size", None) is not None:
        model_args.setdefault("batch_size", args.batch_size)
    try:
        parsed = S2D2LM.parse_model_args(**model_args)
        if isinstance(pretrained, str) and parsed.custom_model_class is None:
            family = S2D2LM.check_pretrained(pretrained, parsed.generate_fn)
            if parsed.lora_dir is not None:
                S2D2LM.check_adapter(parsed.lora_dir, family)
    except ModelArgError as err:
        sys.exit(f"lm_eval_cli.py: error: {err}")


def main() -> None:
    sys.argv = with_task_path(sys.argv)
    check_s2d2_model_args()
    silence_known_notices()
    try:
        lm_eval.__main__.cli_evaluate()
    except ValueError as err:  # lm-eval's own check of --tasks, raised before any model loads
        if not str(err).startswith("Tasks not found"):
            raise
        sys.exit(f"lm_eval_cli.py: error: {err} (this repository's tasks: {', '.join(repo_tasks())}; "
                 "`lm-eval ls tasks` lists lm-eval's own)")


def repo_tasks() -> list[str]:
    """The task and group names of the task YAMLs under s2d2_eval/tasks."""
    names = (re.match(r"(?:task|group): *(\w+)", line) for path in sorted(TASKS_DIR.rglob("*.yaml"))
             for line in path.read_text().splitlines())
    return sorted({match.group(1) for match in names if match})


if __name__ == "__main__":
    main()
