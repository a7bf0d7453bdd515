"""The report of a hardware-aware search (``fedge-search``): the Pareto plot and ``search.md``.

Reads only ``search.json`` (written by :mod:`fedge.search.study`), so ``fedge-report
SEARCH_DIR`` redraws it without optuna. The plot: accuracy against the second
objective (int8 kB or device latency ms) of every completed trial, feasible trials as
filled dots and infeasible ones as crosses, the feasible Pareto front as a step line,
the budget of the plotted quantity as a dashed vertical line, the answer ringed; each
point is labelled with its trial number and the limits it breaks (F flash, R training
RAM, L latency: a point left of the flash line can still be over budget).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SEARCH_JSON = "search.json"
PARETO_PNG = "pareto.png"
SEARCH_MD = "search.md"
SHORT = {"flash_kb": "F", "train_ram_kb": "R", "latency_ms": "L"}
AXIS = {"int8_kb": ("int8 model (kB, ONNX file)", "flash_kb"), "latency_ms": ("latency per inference (ms, device estimate)", "latency_ms")}


def plot_pareto(result: dict[str, Any], path: Path) -> Path:
    """Accuracy vs the second objective, feasible/infeasible marked, the front and the budget drawn."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import ScalarFormatter

    objective = result["settings"]["objective"]
    xlabel, limit = AXIS[objective]
    done = [t for t in result["trials"] if t["status"] == "complete"]
    fig = Figure(figsize=(7.0, 4.5), dpi=100, layout="constrained")
    ax = fig.subplots()
    fits = [t for t in done if t["feasible"]]
    over = [t for t in done if not t["feasible"]]
    ax.scatter([t[objective] for t in fits], [t["accuracy"] for t in fits], marker="o", color="tab:blue",
               label=f"fits the budget ({len(fits)})", zorder=3)
    ax.scatter([t[objective] for t in over], [t["accuracy"] for t in over], marker="x", color="tab:red",
               label=f"over budget ({len(over)})", zorder=3)
    front = sorted((t for t in done if t["number"] in (result.get("pareto") or [])), key=lambda t: t[objective])
    if front:
        ax.step([t[objective] for t in front], [t["accuracy"] for t in front], where="post", color="tab:blue",
                alpha=0.6, label="Pareto front (feasible)")
    budget = result["budget"][limit]
    ax.axvline(budget, color="black", linestyle="--", linewidth=1,
               label=f"budget {limit} = {budget:g} ({result['budget']['profile']})")
    answer = next((t for t in done if t["number"] == result.get("answer")), None)
    if answer is not None:
        ax.scatter([answer[objective]], [answer["accuracy"]], s=160, facecolors="none", edgecolors="tab:green",
                   linewidths=2, label=f"answer: trial {answer['number']}", zorder=4)
    for t in done:  # trial number; over budget: which limits it breaks (F flash, R training RAM, L latency)
        broken = "".join(SHORT[v.split()[0]] for v in t["violations"])
        ax.annotate(f"{t['number']}{' ' + broken if broken else ''}", (t[objective], t["accuracy"]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points", color="dimgray")
    ax.set(xlabel=xlabel, ylabel="final test accuracy",
           title=f"fedge-search {result['name']}: accuracy vs {objective} (labels: trial, broken limits F/R/L)")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(ScalarFormatter())
    ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncols=2, fontsize="small")
    fig.savefig(path, bbox_inches="tight")
    return path


def _knobs(knobs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in knobs.items())


def markdown(result: dict[str, Any], plot_name: str = PARETO_PNG) -> str:
    """``search.md``: the budget, the answer against the best trial, every trial, the cost."""
    b, c, n = result["budget"], result["cost"], result["counts"]
    trials = {t["number"]: t for t in result["trials"]}
    lines = [f"# fedge-search {result['name']}", "",
             f"Budget (device profile `{b['profile']}`): int8 model <= {b['flash_kb']:g} kB flash, peak training "
             f"memory <= {b['train_ram_kb']:g} kB, latency <= {b['latency_ms']:g} ms per inference (estimated as "
             f"MACs / {b['int8_macs_per_s']:.3g} int8 MAC/s).",
             f"Objectives: {', '.join(result['objectives'])}. {n['trials']} trials: {n['complete']} complete, "
             f"{n['feasible']} within the budget, {n['failed']} failed.", ""]
    answer, best = trials.get(result.get("answer")), trials.get(result.get("best_unconstrained"))
    if answer is None or best is None:
        lines += ["**No trial fits the budget.**", ""]
    else:
        lines += [f"**Answer: trial {answer['number']}** ({_knobs(answer['knobs'])}): accuracy {answer['accuracy']:.4f}, "
                  f"int8 {answer['int8_kb']:.1f} kB, training memory {answer['train_ram_kb']:.1f} kB, "
                  f"latency {answer['latency_ms']:.2f} ms; {result['answer_gap_pp']:.2f} pp below the best trial "
                  f"regardless of the budget (trial {best['number']}, {best['accuracy']:.4f}"
                  f"{'' if best['feasible'] else ', over budget: ' + '; '.join(best['violations'])}).", ""]
    lines += [f"![Pareto front]({plot_name})", "",
              "| trial | knobs | accuracy | int8 acc (ORT) | int8 kB | train RAM kB | latency ms (device) | ORT ms (host) | fits | why not |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for t in result["trials"]:
        if t["status"] != "complete":
            lines.append(f"| {t['number']} | {_knobs(t['knobs'])} | failed | | | | | | no | {t['reason']} |")
            continue
        mark = " (Pareto)" if t["number"] in (result.get("pareto") or []) else ""
        lines.append(f"| {t['number']}{mark} | {_knobs(t['knobs'])} | {t['accuracy']:.4f} | {t['int8_accuracy']:.4f} | "
                     f"{t['int8_kb']:.1f} | {t['train_ram_kb']:.1f} | {t['latency_ms']:.2f} | {t['ort_int8_latency_ms']:.3f} | "
                     f"{'yes' if t['feasible'] else 'no'} | {'; '.join(t['violations'])} |")
    lines += ["", f"Cost: {c['wall_s']:.0f} s wall, {c['cpu_s']:.0f} CPU s (user + sys, this process and its "
              f"children; {c['cpu_s_per_2_cores']:.0f} s = the wall time on 2 idle cores at best) on {c['cpus']} CPUs, "
              f"1-minute load average {c['load_avg_at_start'][0]:.1f} at the start and {c['load_avg_at_end'][0]:.1f} at "
              "the end (a load above the CPU count: other jobs shared them).", "",
              "Every trial is `fedge-sim` with the overrides of its row's knobs; trial 0's command:", "",
              f"    {result['trials'][0]['command']}" if result["trials"] else "", ""]
    return "\n".join(lines)


def make_search_report(search_dir: Path) -> Path:
    """``pareto.png`` and ``search.md`` from ``search_dir/search.json``; returns the markdown's path."""
    path = Path(search_dir) / SEARCH_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{search_dir} holds no {SEARCH_JSON} (not a fedge-search directory)")
    result = json.loads(path.read_text())
    plot_pareto(result, path.parent / PARETO_PNG)
    md = path.parent / SEARCH_MD
    md.write_text(markdown(result))
    return md
