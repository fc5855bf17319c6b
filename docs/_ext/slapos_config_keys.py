"""Every slapos.cfg key: the code's lookups (read with `ast`, nothing imported) joined with the
descriptions of `slapos.cfg.example`. One source each: the code says which keys exist and their
defaults, the example says what they mean. Used by the docs (the configuration reference) and by
tests/docs (a key the code reads must be described in the example)."""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "slapos"
EXAMPLE = REPO / "slapos.cfg.example"

_ACCESSORS = {"get": "text", "get_int": "integer", "get_bool": "boolean", "get_float": "number",
              "get_path": "path", "has": None}
# slapos/format/options.py reads [slapformat] (or [slapos]) through small helpers of its own
_FORMAT_HELPERS = {"text": "text", "path": "path", "boolean": "boolean", "integer": "integer", "raw": "text"}
_REQUIRED = "(required)"
SECTIONS = ("slapos", "slapformat", "slapproxy", "slapconsole", "networkcache")
# keys the code reads only to say, with one warning, that it ignores them
IGNORED = {
    ("slapproxy", "workers"): "removed: the proxy runs one process (raise threads instead)",
    ("slapproxy", "public_directory_path"): "reference key: this proxy serves no public files (its dashboard is at /dashboard)",
    ("slapproxy", "local_software_release_root"): "reference key: software release paths are used as given",
}


@dataclass
class Key:
    section: str
    name: str
    kind: str = "text"
    default: str = ""
    readers: set[str] = field(default_factory=set)
    description: str = ""
    example: str = ""


def _constants(tree: ast.AST) -> dict[str, object]:
    """Module-level NAME = literal (DEFAULT_PORT = 8080)."""
    found: dict[str, object] = {}
    for node in getattr(tree, "body", []):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            value = _value(node.value, found, {})
            if value is not ...:
                found[node.targets[0].id] = value
    return found


def _local_strings(function: ast.AST) -> dict[str, str]:
    """NAME = "text" inside one function (s = "slapos"): how lookups name their section."""
    found: dict[str, str] = {}
    for node in ast.walk(function):
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            found[node.targets[0].id] = node.value.value
    return found


def _value(node: ast.AST | None, constants: dict[str, object], strings: dict[str, str]) -> object:
    if node is None:
        return None
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in strings:
            return strings[node.id]
        if node.id in constants:
            return constants[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
        return -node.operand.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult | ast.LShift | ast.Add):
        left, right = _value(node.left, constants, strings), _value(node.right, constants, strings)
        if isinstance(left, int) and isinstance(right, int):
            return {ast.Mult: left * right, ast.LShift: left << right, ast.Add: left + right}[type(node.op)]
    return ...  # computed


def _show(value: object) -> str:
    if value is ...:
        return "(computed)"
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value == "":
        return "(empty)"
    return str(value)


def code_keys() -> dict[tuple[str, str], Key]:
    keys: dict[tuple[str, str], Key] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        constants = _constants(tree)
        format_options = module == "slapos.format.options"
        scopes = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
        for scope in scopes:
            strings = {**{k: v for k, v in constants.items() if isinstance(v, str)}, **_local_strings(scope)}
            for call in ast.walk(scope):
                if not isinstance(call, ast.Call):
                    continue
                func = call.func
                if isinstance(func, ast.Attribute) and func.attr in _ACCESSORS and len(call.args) >= 2:
                    section = _value(call.args[0], constants, strings)
                    name = _value(call.args[1], constants, strings)
                    kind = _ACCESSORS[func.attr]
                    default_node = call.args[2] if len(call.args) > 2 else next(
                        (k.value for k in call.keywords if k.arg == "default"), None)
                    has_default = default_node is not None
                elif module == "slapos.grid.cache" and _cache_key(call) is not None:
                    section, name, kind, default_node, has_default = "networkcache", _cache_key(call), "text", None, True
                elif (module == "slapos.proxy.cache" and isinstance(func, ast.Name) and func.id == "get"
                      and len(call.args) == 1):
                    section, name = "slapproxy", _value(call.args[0], constants, strings)
                    kind, default_node, has_default = "path", None, True
                elif format_options and isinstance(func, ast.Name) and func.id in _FORMAT_HELPERS and call.args:
                    section, name = "slapformat", _value(call.args[0], constants, strings)
                    kind = _FORMAT_HELPERS[func.id]
                    default_node = call.args[1] if len(call.args) > 1 else None
                    has_default = True  # these helpers default to unset
                else:
                    continue
                if not (isinstance(section, str) and isinstance(name, str)) or section not in SECTIONS:
                    continue
                if name in ("key",):  # the helpers' own parameter, not a key
                    continue
                key = keys.setdefault((section, name), Key(section, name))
                key.readers.add(module)
                if kind is None:  # has(): tells nothing of type or default
                    continue
                key.kind = kind
                default = _show(_value(default_node, constants, strings)) if has_default else _REQUIRED
                if not key.default or key.default in ("(unset)", "(computed)"):
                    key.default = default
    for (section, name), key in list(keys.items()):
        key.default = key.default or "(unset)"
        # the reference's dashed spelling of an underscore key (only-cp / only_cp): one entry
        twin = (section, name.replace("-", "_"))
        if "-" in name and twin in keys and twin != (section, name):
            keys[twin].readers |= key.readers
            del keys[(section, name)]
    return keys


def _cache_key(call: ast.Call) -> str | None:
    """`_opt(o, "key")` or `o.get("key")` in slapos/grid/cache.py: a [networkcache] key."""
    func = call.func
    if isinstance(func, ast.Name) and func.id == "_opt" and len(call.args) == 2:
        arg = call.args[1]
    elif (isinstance(func, ast.Attribute) and func.attr == "get" and isinstance(func.value, ast.Name)
          and func.value.id == "o" and len(call.args) == 1):
        arg = call.args[0]
    else:
        return None
    return arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None


_KEY_LINE = re.compile(r"^#?\s?([a-z][a-z0-9_.-]*)\s*=\s*(.*)$")


def example_keys(text: str | None = None) -> dict[tuple[str, str], tuple[str, str]]:
    """(section, key) → (description, example value) from slapos.cfg.example: the comment lines
    just above a key (commented-out or not) describe it."""
    text = EXAMPLE.read_text(encoding="utf-8") if text is None else text
    found: dict[tuple[str, str], tuple[str, str]] = {}
    section = ""
    pending: list[str] = []  # comment lines since the last key
    group = ""  # the description of the key just above (consecutive keys share it)
    for raw in text.splitlines():
        line = raw.rstrip()
        header = re.match(r"^#?\[([^\]]+)\]$", line)
        if header:
            section, pending, group = header.group(1), [], ""
            continue
        match = _KEY_LINE.match(line)
        if match and section and not line.startswith("# "):
            name, value = match.groups()
            description = " ".join(pending).strip() or group
            group, pending = description, []
            old = found.get((section, name))
            # a key shown twice (layout A, then B) keeps its first description and value
            found[(section, name)] = old or (description, value)
            continue
        if line.startswith("#    ") or line.startswith("    "):
            continue  # continuation of a multi-line value
        if line.startswith("#") and not line.startswith("# ---"):
            if not pending:
                group = ""
            pending.append(line.lstrip("#").strip())
        else:
            pending, group = [], ""
    return found


def all_keys() -> list[Key]:
    keys = code_keys()
    for (section, name), (description, value) in example_keys().items():
        key = keys.setdefault((section, name), Key(section, name, default="(see example)"))
        key.description, key.example = description, value
    for (section, name), reason in IGNORED.items():
        if (section, name) in keys:
            keys[(section, name)].description = f"ignored, with a warning: {reason}"
            keys[(section, name)].default = "—"
    order = {"slapos": 0, "slapformat": 1, "slapproxy": 2, "slapconsole": 3, "networkcache": 4}
    return sorted(keys.values(), key=lambda k: (order.get(k.section, 9), k.section, k.name))
