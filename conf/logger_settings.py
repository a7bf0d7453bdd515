"""The ``logger`` group read and checked without importing tensorboard or mlflow.

:func:`check_logger` refuses a dashboard whose package is missing (``fedge-sim`` and
``fedge-server`` call it before Hydra writes anything, so ``fedge-sim --help`` and a
refused config import neither); :func:`mlflow_tracking_uri` says where an MLflow run
goes. The dashboards themselves are :mod:`fedge.server.dashboards`.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from omegaconf import DictConfig

from fedge.conf.build import ConfigError

#: The extra that installs both dashboards.
EXTRA = "dashboards"
#: Dashboard (``logger.<name>``) -> (module it imports, the PyPI package that provides it).
PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow-skinny")}
#: A tracking URI with a scheme (``file:``, ``sqlite:///``, ``http://``); anything else is a path.
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def enabled(cfg: DictConfig) -> list[str]:
    """The dashboards ``cfg.logger`` switches on (``tensorboard``, ``mlflow``), in that order."""
    logger = cfg.get("logger")
    return [name for name in PACKAGES if logger is not None and logger[name].enabled]


def check_logger(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` naming the setting when a dashboard asked for cannot run."""
    for name in enabled(cfg):
        module, package = PACKAGES[name]
        if not installed(module):
            raise ConfigError(
                f"logger.{name}: logger={name} needs the {package} package, which is not installed: "
                f"pip install 'fedge[{EXTRA}]'"
            )
    logger = cfg.get("logger")
    if logger is not None and logger.tensorboard.enabled and not logger.tensorboard.dir:
        raise ConfigError("logger.tensorboard.dir: empty; give a folder (relative to the run's output directory)")
    if logger is not None and logger.mlflow.enabled and not logger.mlflow.experiment:
        raise ConfigError("logger.mlflow.experiment: empty; give an experiment name")


def mlflow_tracking_uri(setting: str, out_dir: Path) -> str:
    """The tracking URI of ``logger.mlflow.tracking_uri``: ``""`` = MLflow's file store in
    ``<out_dir>/mlruns``; a path = a file store there (relative to the working
    directory); a URI with a scheme as it is."""
    if not setting:
        return (out_dir / "mlruns").resolve().as_uri()
    if _URI_SCHEME.match(setting):
        return setting
    return Path(setting).expanduser().resolve().as_uri()
