"""``fedge-search [CONFIG] [key=value ...]``: the hardware-aware search, from the command line.

``CONFIG`` names ``conf/search/<CONFIG>.yaml`` (default ``har_wearable``) or a YAML file;
``key=value`` overrides any of its settings (``trials=6``, ``federation.rounds=4``,
``budget.flash_kb=32``, ``space.width.choices=[8,16]``). Writes to ``-o`` (default
``outputs/search/<CONFIG>``): ``search.json`` (every trial, the Pareto front, the answer,
the cost), ``pareto.png``, ``search.md`` and one ``trials/NNN/`` run directory per trial
(``results.json``, ``final_model.npz``, ``export/``). A configuration error is one line
``fedge-search: configuration error: <key>: <what>`` and exit status 2, before any trial.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

#: Said instead of a traceback when optuna (the ``search`` extra) is not installed.
MISSING_OPTUNA = "fedge-search: needs optuna, the search extra: pip install 'fedge[search]'"


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (``fedge-search``)."""
    try:
        import optuna  # noqa: F401  (fedge.search.knobs and .study need it)
    except ImportError:
        print(MISSING_OPTUNA, file=sys.stderr)
        return 2
    from fedge.search.knobs import KNOBS, SearchConfigError

    parser = argparse.ArgumentParser(
        prog="fedge-search",
        description="The hardware-aware search: architecture and training knobs under a device profile's flash, "
                    "training-RAM and latency budget; every trial a federation, exported to ONNX int8 and measured. "
                    "Writes search.json, pareto.png, search.md and trials/NNN/.",
        epilog="knobs: " + "; ".join(f"{name}: {knob.what}" for name, knob in KNOBS.items()))
    parser.add_argument("config", nargs="?", default="har_wearable", help="conf/search/<CONFIG>.yaml or a YAML path")
    parser.add_argument("overrides", nargs="*", help="key=value settings over the config's")
    parser.add_argument("-o", "--out", type=Path, default=None, help="output directory (default outputs/search/<CONFIG>)")
    args = parser.parse_args(argv)
    if "=" in args.config:  # only overrides were given
        args.overrides, args.config = [args.config, *args.overrides], "har_wearable"
    from fedge.search.settings import load_settings
    from fedge.search.study import Search
    from fedge.simulations.search_report import make_search_report

    try:
        bad = [o for o in args.overrides if "=" not in o]
        if bad:
            raise SearchConfigError(f"{bad[0]}: expected key=value")
        settings = load_settings(args.config, args.overrides)
        search = Search(settings, args.out or Path("outputs") / "search" / settings.name)
    except SearchConfigError as exc:
        print(f"fedge-search: configuration error: {exc}", file=sys.stderr)
        return 2
    result = search.run()
    report = make_search_report(search.out_dir)
    answer = result["answer"]
    print(f"fedge-search: {result['counts']['feasible']} of {result['counts']['trials']} trials fit the budget; "
          + (f"answer: trial {answer} ({result['answer_gap_pp']:.2f} pp below the best trial)" if answer is not None
             else "no trial fits"))
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
