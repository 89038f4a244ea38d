"""Entry point: ``python run.py [group=option ...] [key=value ...]``. The work happens in ``vcon.train.run``."""
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import vcon  # noqa: F401  (registers the ${asset:...} resolver the configs use)
from vcon import results, train
from vcon.errors import ConfigError


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    run_dir = HydraConfig.get().runtime.output_dir
    try:
        summary = train.run(cfg, run_dir)
    except ConfigError as error:
        print(f"vcon: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(results.table(summary, f"VCON {cfg.compression.name} on {cfg.model.name} / {cfg.data.name}  ({run_dir})"))
    return summary["test_acc"]


if __name__ == "__main__":
    main()
