"""Paper-style comparison tables from run records (markdown + CSV), one table per (model, task).

    python scripts/make_table.py                      # results/sdar -> results/sdar/table.{md,csv}
    python scripts/make_table.py results/my_sweep --out /tmp/table

Columns: accuracy ± s.e., NFE, TPF, tokens/s, speedup vs AR mode (TPF ratio and tokens/s ratio),
speedup vs the best dynamic-threshold baseline at matched accuracy (the fastest dynamic point whose
accuracy is >= the point's accuracy minus its s.e.), verify fraction, Pareto membership. The CSV
keeps full precision and names each row's record relative to the repository root; definitions are
printed under the markdown. Reads records only, and refuses (one line naming the files) records that
must not share a table: other model, task, sample count or sweep, a truncated record, a missing metric.
"""

from __future__ import annotations

import sys
from pathlib import Path

from s2d2_eval import REPO_ROOT
from s2d2_eval.records import RecordError, atomic_write_text, display_path, records_from_command_line
from s2d2_eval.report import comparison_rows, group_points, to_csv, to_markdown


def main(argv: list[str] | None = None) -> int:
    args, root, records = records_from_command_line(__doc__, "output prefix (default: <sweep_dir>/table)", argv,
                                                    REPO_ROOT / "results" / "sdar")
    try:
        groups = {key: comparison_rows(points) for key, points in group_points(records).items()}
    except RecordError as err:
        sys.exit(f"make_table.py: error: {err}")
    prefix = Path(args.out) if args.out else root / "table"
    markdown = to_markdown(groups)
    atomic_write_text(prefix.with_suffix(".md"), markdown)
    atomic_write_text(prefix.with_suffix(".csv"), to_csv([row for rows in groups.values() for row in rows]))
    print(markdown)
    print(f"wrote {display_path(prefix.with_suffix('.md'))} and {display_path(prefix.with_suffix('.csv'))} "
          f"({len(records)} records)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
