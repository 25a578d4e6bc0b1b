"""The config groups whose options are the registries' names: `model=NAME`, `data=NAME`,
`criterion=NAME`, `growth=NAME` exist for every registered name, generated into Hydra's
ConfigStore, so that adding a model, dataset, criterion or growth rule to its registry is
enough. A YAML file `conf/<group>/<name>.yaml` is an option with more settings than the name
(`model=resnet56`, `data=synthetic`); it takes the place of the generated one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

from .resources import CONF_DIR

# group -> (the field its option sets, the package that field is in)
REGISTRY_GROUPS = {
    "model": ("name", "model"),
    "data": ("name", "data"),
    "criterion": ("criterion", "sparsity"),
    "growth": ("growth", "sparsity"),
}


# The config groups a launch's overrides may choose an option of (`criterion=snip`, `+sweeps=NAME`).
GROUPS = {p.name for p in CONF_DIR.iterdir() if p.is_dir()} | set(REGISTRY_GROUPS) | {"sweeps", "hydra/launcher"}

# group -> (where its entries are registered, the decorator that registers them)
_DECLARED = {
    "model": ("models", "register_model"),
    "data": ("data/sources", "register_dataset"),
    "criterion": ("sparse/criteria.py", "register_criterion"),
    "growth": ("sparse/growth.py", "register_growth"),
}


def declared_names(group: str) -> list[str]:
    """The names a registry group's sources register (`@register_model("lenet5", ...)`), read
    from the source without importing it (torch): for `--help`. The registries themselves
    (`registry_names`) are the truth; a test keeps the two equal."""
    where, decorator = _DECLARED[group]
    path = Path(__file__).resolve().parent / where
    names = []
    for source in sorted(path.glob("*.py")) if path.is_dir() else [path]:
        for node in ast.walk(ast.parse(source.read_text())):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", None) == decorator
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                names.append(str(node.args[0].value))
    return sorted(names)


def registry_names(group: str) -> list[str]:
    from . import data, models  # the registries import torch: only where a config is composed
    from .sparse import criteria, growth  # (as above)

    registries = {"model": models.MODELS, "data": data.DATASETS, "criterion": criteria.CRITERIA}
    return {**registries, "growth": growth.GROWTH_RULES}[group].list()


def store_registry_groups() -> None:
    """Store an option `{field: name}` in each group for every registered name without a YAML file."""
    from hydra.core.config_store import ConfigStore  # Hydra: not on the --help path

    store = ConfigStore.instance()
    for group, (field, package) in REGISTRY_GROUPS.items():
        for name in registry_names(group):
            if not (CONF_DIR / group / f"{name}.yaml").exists():
                store.store(group=group, name=name, node={field: name}, package=package, provider="dst")


def setup_choices() -> dict[str, tuple[str, str]]:
    """`setup` option -> (model.name, data.name) it selects: the pairs known to fit."""

    def name(group: str, option: str) -> str:  # a YAML option may set another name (model=resnet56)
        path = CONF_DIR / group / f"{option}.yaml"
        return yaml.safe_load(path.read_text()).get("name", option) if path.exists() else option

    choices = {}
    for path in sorted((CONF_DIR / "setup").glob("*.yaml")):
        overrides = {}
        for entry in yaml.safe_load(path.read_text()).get("defaults", []):
            for key, value in entry.items() if isinstance(entry, dict) else ():
                overrides[key.removeprefix("override ").strip("/")] = value
        if "model" in overrides and "data" in overrides:
            choices[path.stem] = (name("model", overrides["model"]), name("data", overrides["data"]))
    return choices
