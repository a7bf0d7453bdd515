"""``fedge-report RUN_DIR...``: plots and a markdown report of fedge-sim runs
(the report itself is :mod:`fedge.simulations.report`); for a ``fedge-search`` directory
(one holding ``search.json``) also its Pareto plot and ``search.md``
(:mod:`fedge.simulations.search_report`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fedge.simulations.report import make_report
from fedge.simulations.report_clients import MAX_CLIENT_BARS, TOP_N
from fedge.simulations.search_report import SEARCH_JSON, make_search_report


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (``fedge-report``)."""
    parser = argparse.ArgumentParser(prog="fedge-report", description="Plots and a markdown report of fedge-sim runs.")
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (with results.json) or directories above them")
    parser.add_argument("-o", "--out", type=Path, default=None, help="where to write (default: the run or sweep directory)")
    parser.add_argument(
        "--max-client-bars", type=int, default=MAX_CLIENT_BARS, metavar="N",
        help=f"above N clients in a run, show distributions and the top clients instead of a bar and a row per client "
        f"(every client stays in clients.csv; default {MAX_CLIENT_BARS})",
    )
    parser.add_argument("--top", type=int, default=TOP_N, metavar="N", help=f"clients per top-N table (default {TOP_N})")
    args = parser.parse_args(argv)
    try:
        report = make_report(args.runs, args.out, max_client_bars=args.max_client_bars, top_n=args.top)
        for search_dir in [d for d in args.runs if (d / SEARCH_JSON).is_file()]:
            print(f"search report: {make_search_report(search_dir)}")
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"fedge-report: {exc}", file=sys.stderr)
        return 2
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
