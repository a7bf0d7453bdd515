"""``fedge-server``: the Hydra entry point of :func:`fedge.server.serve.serve`.

``--resume`` and ``--insecure`` are shorthands for ``server.resume=true`` and
``server.insecure=true``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fedge.conf.build import ConfigError
from fedge.conf.schema import register_configs
from fedge.server.serve import serve

FLAGS = {"--resume": "server.resume=true", "--insecure": "server.insecure=true"}

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> float:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result = serve(cfg, Path(HydraConfig.get().runtime.output_dir))
    except (ConfigError, FileNotFoundError) as exc:
        print(f"fedge-server: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    except TimeoutError as exc:
        print(f"fedge-server: {exc}", file=sys.stderr)
        sys.exit(1)
    return result.final.accuracy


def main() -> None:
    """Console entry point (``fedge-server``)."""
    sys.argv = [sys.argv[0], *(FLAGS.get(arg, arg) for arg in sys.argv[1:])]
    _hydra_main()


if __name__ == "__main__":
    main()
