"""This project's config sources, wherever its Hydra app composes a config (the launch,
`hydra.compose`, `--cfg job`, a SLURM job): the folder holding conf/ and sweeps/ (the checkout's
root, or an installed wheel's copies: `src.resources`) on the search path, so that `sweeps/` is
the `sweeps` config group (`+sweeps=NAME`), and the config groups generated from the
registries (`src.config_groups`). Other Hydra apps are left alone.
"""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

from src.resources import CONF_DIR, ROOT


class DstConfigSources(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if any(element.path in (str(CONF_DIR), f"file://{CONF_DIR}") for element in search_path.get_path()):
            from src.config_groups import store_registry_groups  # here: only for this app (it imports torch)

            store_registry_groups()
            search_path.append(provider="dst", path=f"file://{ROOT}")
