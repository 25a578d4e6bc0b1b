"""The config groups whose options are the registries' names: `model=NAME`, `data=NAME`,
`criterion=NAME`, `growth=NAME` exist for every registered name, generated into Hydra's
ConfigStore, so that adding a model, dataset, criterion or growth rule to its registry is
enough. A YAML file `conf/<group>/<name>.yaml` is an option with more settings than the name
(`model=resnet56`, `data=synthetic`); it takes the place of the generated one.
"""

from __future__ import annotations

from .resources import CONF_DIR

# group -> (the field its option sets, the package that field is in)
REGISTRY_GROUPS = {
    "model": ("name", "model"),
    "data": ("name", "data"),
    "criterion": ("criterion", "sparsity"),
    "growth": ("growth", "sparsity"),
}


def registry_names(group: str) -> list[str]:
    from .data import DATASETS
    from .models import MODELS
    from .sparse.criteria import CRITERIA
    from .sparse.growth import GROWTH_RULES

    return {"model": MODELS, "data": DATASETS, "criterion": CRITERIA, "growth": GROWTH_RULES}[group].list()


def store_registry_groups() -> None:
    """Store an option `{field: name}` in each group for every registered name without a YAML file."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for group, (field, package) in REGISTRY_GROUPS.items():
        for name in registry_names(group):
            if not (CONF_DIR / group / f"{name}.yaml").exists():
                store.store(group=group, name=name, node={field: name}, package=package, provider="dst")


def setup_choices() -> dict[str, tuple[str, str]]:
    """`setup` option -> (model.name, data.name) it selects: the pairs known to fit."""
    import yaml

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
