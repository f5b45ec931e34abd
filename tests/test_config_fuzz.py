"""Any YAML text at all: the validator returns a config or a UserError naming the problem, never anything else."""
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REPO
from trainer.config import parse_config
from trainer.config.schema import load_schema
from trainer.errors import UserError

BASE = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text().replace("${TRAINER_CACHE:-~/.cache/trainer}", "/tmp"))
KEYS = [k for section in load_schema()["properties"].values() for k in section.get("properties", {})] + list(load_schema()["properties"])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=30), st.sampled_from(KEYS))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), inner, max_size=4)), max_leaves=12)


def mutate(data, path, value):
    node = data
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value
    return data


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(section=st.sampled_from(list(BASE) + ["extra"]), key=st.sampled_from(KEYS), value=values)
def test_mutated_configs_never_crash(section, key, value):
    import copy

    data = mutate(copy.deepcopy(BASE), [section, key], value)
    try:
        text = yaml.safe_dump(data, allow_unicode=True)
    except yaml.YAMLError:
        return
    try:
        parse_config(text, "fuzz.yaml")
    except UserError as exc:
        assert exc.problems and all(str(p) for p in exc.problems)


@settings(max_examples=300, deadline=None)
@given(text=st.lists(st.sampled_from(list("ab:- \n\t'\"[]{}&*!|>#%@`,?0.5e-") + ["${X}", "<<", "---", "!!python/object", "\n  "]),
                     max_size=60).map("".join))
def test_arbitrary_text_never_crashes(text):
    try:
        parse_config(text, "fuzz.yaml")
    except UserError as exc:
        assert exc.problems
