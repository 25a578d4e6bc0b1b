"""The sweeper of this project's Hydra app. Its jobs are the product of the sweep's overrides
(`src.plan.sweep_combinations`, the product Hydra's basic sweeper forms), handed to the
launcher in one batch. Unlike Hydra's basic sweeper it does not compose every job to check it:
`python -m src.launch` composed and validated each job once before the launch, and the
launchers run those planned jobs (the plan it saved, `src.plan.planned_jobs`).

(No `from __future__ import annotations` here: Hydra imports plugins without registering
them in sys.modules, which string annotations on dataclasses need.)
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from src.plan import sweep_combinations


@dataclass
class PlannedSweeperConf:
    _target_: str = "hydra_plugins.dst_config.sweeper.PlannedSweeper"
    params: dict[str, str] | None = None  # the sweep's axes: `key: a,b,c` (as Hydra's basic sweeper)


ConfigStore.instance().store(group="hydra/sweeper", name="dst", node=PlannedSweeperConf, provider="dst")


class PlannedSweeper(Sweeper):
    def __init__(self, params: dict[str, str] | None = None) -> None:
        self.params = params or {}
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.hydra_context is not None and self.launcher is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        jobs = sweep_combinations(parser.parse_overrides([f"{k}={v}" for k, v in self.params.items()] + arguments))
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        results = self.launcher.launch(jobs, initial_job_idx=0)
        for result in results:
            _ = result.return_value  # raises for a job the launcher reports as failed, as Hydra's sweeper
        return [results]
