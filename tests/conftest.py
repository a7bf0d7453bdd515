"""Shared fixtures: Hydra composition of fedge-sim configs and small federations."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from fedge.simulations.config import register_configs

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"


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
