"""Shared fixtures: Hydra composition of fedge-sim configs and small federations."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from fedge.conf.schema import register_configs

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"

# -- no network: sockets to non-loopback addresses fail in this process and in every
# Python process the tests start (tests/netguard/sitecustomize.py on PYTHONPATH).
NETGUARD_DIR = Path(__file__).resolve().parent / "netguard"
sys.path.insert(0, str(NETGUARD_DIR))
import fedge_netguard  # noqa: E402

NETGUARD_LOG = Path(tempfile.mkstemp(prefix="fedge-netguard-", suffix=".log")[1])
os.environ[fedge_netguard.LOG_ENV] = str(NETGUARD_LOG)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(NETGUARD_DIR), os.environ.get("PYTHONPATH")) if p)
fedge_netguard.install()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if any process of it tried to reach another machine."""
    attempts = NETGUARD_LOG.read_text() if NETGUARD_LOG.exists() else ""
    NETGUARD_LOG.unlink(missing_ok=True)
    if attempts:
        print(f"\nnetwork access attempted during the tests (blocked):\n{attempts}", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def make_cfg() -> Callable[[Sequence[str]], DictConfig]:
    """Compose the fedge-sim config with overrides, as the CLI would."""
    register_configs()

    def _make(overrides: Sequence[str] = ()) -> DictConfig:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))

    return _make


#: Overrides for a federation that runs in a second or two (in-process clients).
FAST = ["progress=false", "backend.num_workers=0", "client.local_epochs=1"]
