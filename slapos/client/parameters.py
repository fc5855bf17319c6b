"""Instance parameters from the command line: `--parameters k=v …` and `--parameters-file FILE`.

* `k=v` pairs are sent as plain key/values, never wrapped (as the reference does).
* JSON (and YAML, when PyYAML happens to be installed) files are wrapped into the single `_` key
  when the software release declares `"serialisation": "json-in-xml"` in `<url>.json`
  (SLAP-PROTOCOL.md §3.5) or when `--force-serialisation json-in-xml` is given; a file whose only
  key is already `_` is sent as it is. Without a declared serialisation (and no
  `--force-serialisation`) a JSON file is refused: guessing would send parameters the software
  cannot read.
* Instance XML files (`<instance><parameter id=…>`) are sent as they are.
* When the software release publishes a request schema, parameters are checked against it with
  `jsonschema` (the release's real schema: `$ref` to other files next to it, `allOf`/`oneOf`,
  `pattern`, `minimum`, ...) and problems are *warned* about, never refused. Without jsonschema
  installed, a small subset is checked (required keys, unknown keys, simple types, enums).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slapos.base.errors import SlapOSError, UsageError

log = logging.getLogger("slapos.request")

SERIALISATIONS = ("xml", "json-in-xml")
JSON_KEY = "_"


class ParameterError(SlapOSError):
    """A parameters file or a `k=v` argument cannot be used."""


def parse_key_values(items: list[str] | None, option: str) -> dict[str, str]:
    """`["a=1", "b=x=y"]` → `{"a": "1", "b": "x=y"}`; a pair without `=` is a usage error."""
    result: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{option} expects key=value pairs, got {item!r}")
        result[key] = value
    return result


@dataclass
class ParameterFile:
    parameters: dict[str, Any]
    kind: str  # "json", "yaml" or "xml"

    @property
    def already_wrapped(self) -> bool:
        return set(self.parameters) == {JSON_KEY}


def _kind_of(path: Path, text: str) -> str:
    suffix = path.suffix.lower()
    if suffix == ".json":
        return "json"
    if suffix in (".yaml", ".yml"):
        return "yaml"
    if suffix == ".xml":
        return "xml"
    stripped = text.lstrip()
    if stripped.startswith("<"):
        return "xml"
    if stripped.startswith(("{", "[")):
        return "json"
    raise ParameterError(f"parameters file {path}: cannot tell its format; name it .json, .yaml or .xml")


def read_parameter_file(path: str | Path) -> ParameterFile:
    path = Path(os.path.expanduser(str(path)))
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParameterError(f"parameters file {path} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ParameterError(f"cannot read parameters file {path}: {getattr(e, 'strerror', None) or e}") from None
    kind = _kind_of(path, text)
    if kind == "json":
        try:
            parameters = json.loads(text)
        except json.JSONDecodeError as e:
            raise ParameterError(
                f"parameters file {path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
            ) from None
    elif kind == "yaml":
        try:
            import yaml  # optional: used only when installed, never a dependency
        except ImportError:
            raise ParameterError(
                f"parameters file {path} is YAML, which needs PyYAML (pip install pyyaml); "
                "or convert it to JSON"
            ) from None
        try:
            parameters = yaml.safe_load(text)
        except yaml.YAMLError as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ParameterError(f"parameters file {path} is not valid YAML: {first}") from None
    else:
        from slapos.slap.wire import WireError, loads_instance_xml

        try:
            parameters = loads_instance_xml(text.encode("utf-8"))
        except WireError as e:
            raise ParameterError(f"parameters file {path} is not instance XML: {e}") from None
    if not isinstance(parameters, dict):
        raise ParameterError(
            f"parameters file {path} must hold an object (key: value), not a {type(parameters).__name__}"
        )
    return ParameterFile(parameters, kind)


# --------------------------------------------------------------------------------------------
# The software release's JSON description (<url>.json)


@dataclass
class SoftwareDescription:
    url: str  # where the JSON was read
    data: dict[str, Any]

    def serialisation(self, software_type: str | None) -> str | None:
        per_type = self._type_entry(software_type)
        value = per_type.get("serialisation") if per_type else None
        return value or self.data.get("serialisation")

    def request_schema_url(self, software_type: str | None) -> str | None:
        entry = self._type_entry(software_type)
        ref = entry.get("request") if entry else None
        if not ref:
            return None
        return _join(self.url, ref)

    def _type_entry(self, software_type: str | None) -> dict[str, Any] | None:
        types = self.data.get("software-type")
        if not isinstance(types, dict):
            return None
        entry = types.get(software_type or "default")
        return entry if isinstance(entry, dict) else None


def _join(base: str, ref: str) -> str:
    if "://" in ref or os.path.isabs(ref):
        return ref
    if "://" in base:
        from urllib.parse import urljoin

        return urljoin(base, ref)
    return str(Path(base).parent / ref)


def _fetch(url: str, timeout: float = 10.0) -> str | None:
    """Text of a local path, `file:` URL or http(s) URL; None when it cannot be read."""
    try:
        if url.startswith("file:"):
            from urllib.parse import unquote, urlparse

            url = unquote(urlparse(url).path)
        if "://" not in url:
            return Path(url).read_text(encoding="utf-8")
        if not url.startswith(("http://", "https://")):
            return None
        from slapos.base import http  # proxies, CAs, redirects: the one HTTP policy

        try:
            answer = http.fetch(url, timeout=timeout, max_bytes=4 * 1024 * 1024)
        except http.PolicyError as e:  # a redirect not followed, a bad proxy: say it, not "no schema"
            log.warning("cannot read %s: %s", url, e)
            return None
        if answer.status != 200:
            log.debug("cannot read %s: HTTP %s", url, answer.status)
            return None
        return answer.body.decode("utf-8")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        log.debug("cannot read %s: %s", url, e)
        return None


def describe_software(software_url: str) -> SoftwareDescription | None:
    url = f"{software_url}.json"
    text = _fetch(url)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        log.warning("%s is not valid JSON; ignoring it", url)
        return None
    return SoftwareDescription(url, data) if isinstance(data, dict) else None


# --------------------------------------------------------------------------------------------
# Putting it together


def build_parameters(
    pairs: list[str] | None,
    parameters_file: str | None,
    software_url: str,
    software_type: str | None,
    force_serialisation: str | None = None,
) -> dict[str, Any]:
    """The `partition_parameter_kw` to send."""
    if pairs and parameters_file:
        raise UsageError("give either --parameters or --parameters-file, not both")
    if not parameters_file:
        return parse_key_values(pairs, "--parameters")
    loaded = read_parameter_file(parameters_file)
    if loaded.kind == "xml":
        return loaded.parameters
    description = describe_software(software_url)
    serialisation = force_serialisation
    if serialisation is None and not loaded.already_wrapped:
        if description is None:
            raise ParameterError(
                f"cannot tell how {software_url} reads its parameters ({software_url}.json is missing "
                "or unreadable): pass --force-serialisation xml or json-in-xml"
            )
        serialisation = description.serialisation(software_type)
        if serialisation not in SERIALISATIONS:
            raise ParameterError(
                f"{description.url} declares no serialisation (xml or json-in-xml): "
                "pass --force-serialisation xml or json-in-xml"
            )
    if description is not None:
        check_against_schema(description, software_type, loaded.parameters)
    if serialisation == "json-in-xml" and not loaded.already_wrapped:
        from slapos.slap.wire import wrap_json_parameters

        return wrap_json_parameters(loaded.parameters)
    return loaded.parameters


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
    "null": (type(None),),
}


def check_against_schema(description: SoftwareDescription, software_type: str | None, parameters: dict) -> list[str]:
    """Warn about parameters the release's request schema does not accept; returns the warnings."""
    schema_url = description.request_schema_url(software_type)
    if not schema_url:
        return []
    text = _fetch(schema_url)
    if text is None:
        log.warning("request schema %s cannot be read; parameters not checked", schema_url)
        return []
    try:
        schema = json.loads(text)
    except ValueError:
        log.warning("request schema %s is not valid JSON; parameters not checked", schema_url)
        return []
    if set(parameters) == {JSON_KEY}:
        try:
            parameters = json.loads(parameters[JSON_KEY])
        except (TypeError, ValueError):
            return []
    problems = schema_problems(schema, parameters, schema_url)
    for problem in problems:
        log.warning("%s (schema %s)", problem, schema_url)
    return problems


def _uri(location: str) -> str:
    return location if "://" in location or location.startswith("file:") else Path(location).absolute().as_uri()


def _describe(error) -> str:
    """One line per problem, naming the parameter, in the words users already know."""
    path = "/".join(str(p) for p in error.absolute_path)
    if error.validator == "required" and not path:
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return f"parameter '{missing}' is required by the software release"
    if error.validator == "additionalProperties" and not path:
        extra = error.message.split("'")[1] if "'" in error.message else error.message
        return f"parameter '{extra}' is not known to the software release"
    if error.validator == "type" and path:
        names = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        return f"parameter '{path}' should be {' or '.join(names)}, got {type(error.instance).__name__}"
    if error.validator == "enum" and path:
        return f"parameter '{path}' should be one of {error.validator_value}, got {error.instance!r}"
    return f"parameter '{path}': {error.message}" if path else error.message


def schema_problems(schema: Any, parameters: Any, schema_url: str | None = None) -> list[str]:
    """What the release's request schema says about `parameters` (one line each). `$ref`s are
    resolved against `schema_url` (files next to it, or http(s))."""
    if not isinstance(schema, dict) or not isinstance(parameters, dict):
        return []
    try:  # late: only `slapos request` with a parameters file needs it (about 0.1 s to import)
        import jsonschema
        from referencing import Registry, Resource
        from referencing.exceptions import NoSuchResource
    except ImportError:
        return _subset_problems(schema, parameters)

    def retrieve(uri: str) -> Resource:
        text = _fetch(uri)
        if text is None:
            raise NoSuchResource(ref=uri)
        return Resource.from_contents(json.loads(text), default_specification=_draft(schema))

    if schema_url and "$id" not in schema:
        schema = {**schema, "$id": _uri(schema_url)}
    validator_class = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    validator = validator_class(schema, registry=Registry(retrieve=retrieve))
    try:
        errors = sorted(validator.iter_errors(parameters), key=lambda e: (list(map(str, e.absolute_path)), e.message))
        return [_describe(e) for e in errors]
    except Exception as e:  # an unreachable $ref, a broken schema: say so, refuse nothing
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        return [f"the request schema cannot be applied: {first}"]


def _draft(schema: dict):
    from referencing.jsonschema import DRAFT7, specification_with

    return specification_with(schema.get("$schema", ""), default=DRAFT7)


def _subset_problems(schema: dict, parameters: dict) -> list[str]:
    """Without jsonschema: required keys, unknown keys, simple types and enums only."""
    problems = []
    properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    for key in schema.get("required", []) or []:
        if key not in parameters:
            problems.append(f"parameter '{key}' is required by the software release")
    for key, value in parameters.items():
        spec = properties.get(key)
        if spec is None:
            if schema.get("additionalProperties") is False:
                problems.append(f"parameter '{key}' is not known to the software release")
            continue
        expected = spec.get("type") if isinstance(spec, dict) else None
        names = expected if isinstance(expected, list) else [expected] if expected else []
        types = tuple(t for name in names for t in _JSON_TYPES.get(name, ()))
        if types and not (isinstance(value, types) and not (isinstance(value, bool) and bool not in types)):
            problems.append(f"parameter '{key}' should be {' or '.join(names)}, got {type(value).__name__}")
        if isinstance(spec, dict) and "enum" in spec and value not in spec["enum"]:
            problems.append(f"parameter '{key}' should be one of {spec['enum']}, got {value!r}")
    return problems
