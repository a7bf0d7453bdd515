"""`python -m bench.X --help` answers with usage for every bench module the README names,
and never starts the bench (a bench that ignores its arguments overwrites its committed
results in bench/results/ when someone only asked what it does)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import bench.devices

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _runnable_modules() -> list[Path]:
    return sorted(p for p in BENCH.glob("*.py") if 'if __name__ == "__main__"' in p.read_text())


@pytest.mark.parametrize("path", _runnable_modules(), ids=lambda p: p.stem)
def test_every_runnable_bench_module_parses_its_arguments(path: Path) -> None:
    calls = {
        node.func.attr
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    }
    assert "parse_args" in calls, f"bench.{path.stem} runs without reading its arguments: --help would start it"


def test_bench_devices_help_prints_usage_and_runs_nothing(monkeypatch, capsys) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("--help started a measurement")

    monkeypatch.setattr(bench.devices, "measure", refuse)
    with pytest.raises(SystemExit) as stop:
        bench.devices.main(["--help"])
    assert stop.value.code == 0
    assert "usage: bench.devices" in capsys.readouterr().out
