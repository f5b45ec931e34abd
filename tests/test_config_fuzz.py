"""Any YAML text at all: the validator returns a config or a UserError naming the problem, never anything else."""
import json

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


def _misspell(key: str, how: int) -> str:
    if not key:
        return key
    i = how % len(key)
    return [key[:i] + key[i + 1:], key[:i] + key[i] * 2 + key[i + 1:], key.upper(), key.replace("_", "-"), key + "s"][how % 5]


@st.composite
def structural_yaml(draw):
    """YAML text built line by line from the real config: keys misspelled, duplicated or dropped, sections nested
    deep, anchors and aliases, unicode and huge strings, extreme numbers."""
    lines = []
    for section, body in BASE.items():
        if draw(st.integers(0, 9)) == 0:
            continue  # a missing section
        name = _misspell(section, draw(st.integers(0, 50))) if draw(st.integers(0, 7)) == 0 else section
        anchor = f" &{section}" if draw(st.integers(0, 5)) == 0 else ""
        lines.append(f"{name}:{anchor}")
        for key, value in (body.items() if isinstance(body, dict) else []):
            how = draw(st.integers(0, 30))
            key = _misspell(key, how) if how < 4 else key
            choice = draw(st.integers(0, 12))
            if choice == 0:
                value = draw(st.sampled_from([1e308, -1e308, 10**30, -(10**30), 0, -1, 1e-320, ".nan", ".inf", "-.inf"]))
            elif choice == 1:
                value = json.dumps(draw(st.text(max_size=20)))
            elif choice == 2:
                value = json.dumps("x" * draw(st.integers(1000, 200_000)))
            elif choice == 3:
                value = "{" * draw(st.integers(1, 80)) + "}" * draw(st.integers(0, 80))
            elif choice == 4:
                value = f"*{draw(st.sampled_from(list(BASE)))}"
            else:
                value = json.dumps(value)
            lines.append(f"  {key}: {value}")
            if draw(st.integers(0, 15)) == 0:
                lines.append(f"  {key}: {value}")  # a duplicate key
    return "\n".join(lines) + "\n"


@settings(max_examples=200, deadline=None)
@given(text=structural_yaml())
def test_structurally_fuzzed_configs_name_a_place_or_pass(text):
    try:
        parse_config(text, "fuzz.yaml")
    except UserError as exc:
        assert exc.problems
        assert all(p.path or p.line or p.file for p in exc.problems), exc.render()


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=structural_yaml())
def test_the_command_line_says_it_in_words_for_a_sample(tmp_path, text, cli):
    """The same through `trainer validate`: exit 0 or 2, a message naming the file, never a traceback."""
    path = tmp_path / "fuzz.yaml"
    path.write_text(text)
    result = cli("validate", "--config", str(path))
    assert result.returncode in (0, 2) and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.returncode == 0 or str(path) in result.stderr
