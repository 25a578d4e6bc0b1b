"""Puts the repository root on this project's config search path, so that `sweeps/` is the
`sweeps` config group (`+sweeps=NAME`) wherever the app's config is composed: the launch,
`hydra.compose`, `--cfg job`, a SLURM job. Other Hydra apps are left alone.
"""

from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

REPO = Path(__file__).resolve().parents[2]
CONF_DIR = REPO / "conf"


class DstSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if any(element.path in (str(CONF_DIR), f"file://{CONF_DIR}") for element in search_path.get_path()):
            search_path.append(provider="dst", path=f"file://{REPO}")
