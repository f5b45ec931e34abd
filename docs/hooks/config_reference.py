"""The configuration reference page, generated from trainer/config/schema.json when the site is built.

mkdocs loads this file as a hook (mkdocs.yml, `hooks:`); `on_files` adds `config-reference.md` to the site without
writing it to disk, so the page can never drift from the schema. Every section and field is listed with its type,
default, allowed values and description, in the schema's own order.

Run it alone to see the page: `python docs/hooks/config_reference.py [schema.json]`.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

PAGE = "config-reference.md"
SCHEMA = Path("trainer") / "config" / "schema.json"  # relative to the repository root (mkdocs.yml's folder)


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    root = Path(config["config_file_path"]).resolve().parent
    files.append(File.generated(config, PAGE, content=render(json.loads((root / SCHEMA).read_text()))))
    return files


def render(schema: dict) -> str:
    sections = schema["properties"]
    required = set(schema.get("required", []))
    out = [
        "# Configuration reference",
        "",
        schema.get("description", ""),
        "",
        f"This page is generated from `{SCHEMA.as_posix()}` every time the site is built ([about this page](#about-this-page)). "
        "Unknown keys are errors (with a \"did you mean\"), and `trainer validate --config my.yaml --print` shows a "
        "config with every default filled in.",
        "",
        "| section | what it is | |",
        "|---|---|---|",
    ]
    for name, sub in sections.items():
        mark = "required" if name in required else ""
        out.append(f"| [`{name}`](#{name}) | {_cell(sub.get('description', ''))} | {mark} |")
    out.append("")
    for name, sub in sections.items():
        out += _section((name,), sub, name in required, level=2)
    out += [
        "## About this page {#about-this-page}",
        "",
        "Columns: **type** is the JSON type (*or empty* means `null` is allowed, which in YAML is an empty value or "
        "`null`); **default** is what an absent key means; **allowed** lists the choices or bounds. Fields marked "
        "*advanced* sit under \"Advanced\" in the web UI's form. The same schema drives the validator, the defaults and "
        "the web UI's form, and `trainer schema` prints it for editors: put "
        "`# yaml-language-server: $schema=/path/to/trainer/config/schema.json` as the first line of a config for "
        "completion and checking in VS Code (YAML extension) or any editor that uses yaml-language-server.",
        "",
    ]
    return "\n".join(out)


def _section(path: tuple[str, ...], node: dict, required: bool, level: int) -> list[str]:
    key = ".".join(path)
    out = [f"{'#' * level} `{key}` {{#{key}}}", ""]
    title = node.get("title")
    lead = f"**{title}.** " if title else ""
    out += [lead + _escape(node.get("description", "")), ""]
    facts = [f"type: {_type(node)}"]
    if required:
        facts.append("required")
    if "default" in node:
        facts.append(f"default: {_value(node['default'])}")
    allowed = _allowed(node)
    if allowed:
        facts.append(f"allowed: {allowed}")
    if node.get("x-advanced"):
        facts.append("*advanced*")
    out += ["; ".join(facts), ""]
    fields = node.get("properties")
    if not fields:
        return out
    needed = set(node.get("required", []))
    out += ["| key | type | default | allowed | description |", "|---|---|---|---|---|"]
    nested = []
    for name, sub in fields.items():
        sub_key = f"{key}.{name}"
        if sub.get("properties"):
            nested.append((name, sub))
            name_cell = f"[`{name}`](#{sub_key})"
        else:
            name_cell = f"`{name}`"
        if name in needed:
            name_cell += " (required)"
        if sub.get("x-advanced"):
            name_cell += " *advanced*"
        default = _value(sub["default"]) if "default" in sub else ""
        description = sub.get("description", "")
        if sub.get("properties"):
            description += f" Its fields: see [`{sub_key}`](#{sub_key})."
        out.append(f"| {name_cell} | {_type(sub)} | {_cell(default)} | {_cell(_allowed(sub))} | {_cell(description)} |")
    out.append("")
    for name, sub in nested:
        out += _section(path + (name,), sub, name in needed, level + 1)
    return out


def _type(node: dict) -> str:
    if "anyOf" in node:
        return " or ".join(_type(alt) for alt in node["anyOf"])
    if "const" in node:
        return _value(node["const"])
    kind = node.get("type")
    if kind is None:
        return "choice" if "enum" in node else "any"
    kinds = [kind] if isinstance(kind, str) else list(kind)
    empty = "null" in kinds
    named = []
    for k in kinds:
        if k == "null":
            continue
        if k == "array" and "items" in node:
            item = node["items"]
            named.append(f"list of {_type(item)}" if "enum" not in item else "list of choices")
        else:
            named.append(k)
    text = " or ".join(named) or "null"
    return text + (" or empty" if empty and named else "")


def _allowed(node: dict) -> str:
    parts = []
    enum = node.get("enum") or node.get("items", {}).get("enum")
    if enum:
        parts.append(", ".join(_value(v) for v in enum))
    if "x-named" in node:
        parts.append("built in: " + ", ".join(_value(v) for v in node["x-named"]) + "; or a Jinja template")
    for alt in node.get("anyOf", []):
        if "const" in alt:
            parts.append(_value(alt["const"]))
        elif alt.get("type") == "array":
            parts.append("a list of names" + (" (no repeats)" if alt.get("uniqueItems") else ""))
    bounds = [
        ("minimum", "≥ {}"), ("exclusiveMinimum", "> {}"), ("maximum", "≤ {}"), ("exclusiveMaximum", "< {}"),
        ("minLength", "at least {} characters"), ("maxLength", "at most {} characters"),
        ("minItems", "at least {} item(s)"), ("maxItems", "at most {} item(s)"),
    ]
    for key, form in bounds:
        if key in node and not (key == "minLength" and node[key] == 1):
            parts.append(form.format(node[key]))
    if node.get("minLength") == 1:
        parts.append("not empty")
    if node.get("uniqueItems") and "anyOf" not in node:
        parts.append("no repeats")
    if "pattern" in node:
        parts.append(f"matches `{node['pattern']}`")
    if "examples" in node and "x-named" not in node:
        parts.append("e.g. " + ", ".join(_value(v) for v in node["examples"]))
    return "; ".join(parts)


def _value(value: Any) -> str:
    return f"`{json.dumps(value, ensure_ascii=False)}`" if not isinstance(value, str) else f"`{value}`"


def _escape(text: str) -> str:
    """Outside backticks, < and > would be read as HTML (the schema mentions <tool_call>)."""
    pieces = text.split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;").replace(">", "&gt;") for i, p in enumerate(pieces))


def _cell(text: str) -> str:
    return _escape(text).replace("|", "\\|").replace("\n", " ")


if __name__ == "__main__":
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else SCHEMA
    print(render(json.loads(source.read_text())))
