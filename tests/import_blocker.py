"""Run Python code in a fresh interpreter where one package cannot be imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCKER = """
import sys
class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name == {module!r} or name.startswith({module!r} + "."):
            raise ImportError(f"{module} is blocked in this test: {{name}}")
        return None
sys.meta_path.insert(0, _Blocker())
"""


def run_without(module: str, body: str, timeout_s: float = 300) -> subprocess.CompletedProcess:
    """``body`` run by ``python -c`` with every import of ``module`` (and its submodules) failing."""
    code = BLOCKER.format(module=module) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s)
