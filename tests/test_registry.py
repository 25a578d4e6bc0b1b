import pytest

from src.data import DATASETS
from src.models import MODELS
from src.registry import Registry
from src.sparse import CRITERIA, GROWTH_RULES


def test_register_get_list_and_one_error_format():
    things = Registry("thing")

    @things.register("alpha")
    def alpha():
        return 1

    things.register("beta", "entry")
    assert things.get("alpha") is alpha and things.get("beta") == "entry"
    assert things.list() == ["alpha", "beta"] and things.list("a*") == ["alpha"]
    assert things.list(where=lambda e: e == "entry") == ["beta"]
    with pytest.raises(ValueError, match=r"^unknown thing 'gamma'; choose from \['alpha', 'beta'\]$"):
        things.get("gamma")
    with pytest.raises(ValueError, match="thing 'alpha' is already registered"):
        things.register("alpha", 2)


@pytest.mark.parametrize(
    "registry, kind", [(MODELS, "model"), (DATASETS, "dataset"), (CRITERIA, "criterion"), (GROWTH_RULES, "growth rule")]
)
def test_every_registry_is_one_idiom(registry, kind):
    assert isinstance(registry, Registry) and registry.kind == kind
    with pytest.raises(ValueError, match=rf"^unknown {kind} 'nope'; choose from \[{registry.list()[0]!r}"):
        registry.get("nope")


def test_list_filters_like_timm():
    assert CRITERIA.list("snip*") == ["snip", "snip_half", "snip_plus"]
    assert "grasp" not in CRITERIA.list(where=lambda c: not c.needs_batch)
