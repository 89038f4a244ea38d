"""Puts the repository root on Hydra's config search path, so the ready sweeps in ``sweeps/`` are a config group:
``python run.py -m +sweeps=paper-table-micro`` from any working directory."""
from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

REPOSITORY = Path(__file__).resolve().parents[2]


class VconSweepsSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if (REPOSITORY / "sweeps").is_dir():
            search_path.append(provider="vcon-sweeps", path=f"file://{REPOSITORY}")
