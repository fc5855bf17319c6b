"""slapnode:publish — publish connection parameters of this instance to the master.

    [publish]
    recipe = slapnode:publish
    url = http://${slap-configuration:ipv4-random}:${slap-configuration:configuration.port}/
    admin-password = ${admin-password:passwd}

Every option except `recipe` and the ones starting with `-` is published, as a string. Options:
  -serialisation = json-in-xml   publish everything as one `_` key holding a JSON object (§3.5)
  -slave-reference = <ref>       publish for one shared instance hosted here (its slave_reference)
  -for-each-slave = <JSON list>  publish for every shared instance of the list, normally
                                 ${slap-configuration:slave-instance-list}; values may then use
                                 `{slave_reference}` or `{<any parameter of the shared instance>}`
                                 (Python format fields; write `{{`/`}}` for literal braces). A
                                 shared instance lacking a field is skipped with a warning.
The partition identity comes from `[slap-connection]` (override with `-computer-id` & co).
The client library compares with what the master already has and sends nothing when the values
did not change, so running it on every buildout run costs one GET.
"""
from __future__ import annotations

import json
import string

from .common import Recipe as _Base
from .common import SlapConnection, slap_errors
from .config import wrap_json_in_xml


class Recipe(_Base):
    def __init__(self, buildout, name, options):
        super().__init__(buildout, name, options)
        self.serialisation = options.get("-serialisation", "xml").strip() or "xml"
        if self.serialisation not in ("xml", "json-in-xml"):
            raise self.error(f"-serialisation = {self.serialisation!r}: use xml or json-in-xml")
        self.values = {
            k: v for k, v in sorted(options.items()) if k != "recipe" and not k.startswith(("-", "_"))
        }
        self.slaves = None
        if "-for-each-slave" in options:
            try:
                self.slaves = json.loads(options["-for-each-slave"] or "[]")
                if not isinstance(self.slaves, list):
                    raise ValueError("not a list")
            except ValueError as e:
                raise self.error(f"-for-each-slave: expected a JSON list of shared instances ({e})") from None
            for key, value in self.values.items():
                try:
                    list(string.Formatter().parse(value))
                except ValueError as e:
                    raise self.error(f"option {key!r}: {e} (write {{{{ and }}}} for literal braces)") from None

    def _serialise(self, values: dict[str, str]) -> dict[str, str]:
        if self.serialisation == "json-in-xml":
            return wrap_json_in_xml(values)
        return values

    def targets(self) -> list[tuple[str | None, dict[str, str]]]:
        """(slave_reference or None, values) for every publication to make."""
        if self.slaves is None:
            reference = self.options.get("-slave-reference", "").strip() or None
            return [(reference, self._serialise(self.values))]
        result = []
        for slave in self.slaves:
            reference = slave.get("slave_reference") if isinstance(slave, dict) else None
            if not reference:
                self.log.warning("skipping a shared instance without slave_reference: %r", slave)
                continue
            try:
                values = {k: v.format_map(slave) for k, v in self.values.items()}
            except (KeyError, IndexError, AttributeError) as e:
                self.log.warning("shared instance %s: not published, it lacks %s", reference, e)
                continue
            result.append((reference, self._serialise(values)))
        return result

    def install(self):
        connection = SlapConnection.from_recipe(self, prefix="-")
        targets = self.targets()
        if not targets:
            return []
        partition = connection.partition(self)
        for reference, values in targets:
            target = f"shared instance {reference}" if reference else connection.partition_id
            with slap_errors(self, f"publishing the connection parameters of {target}"):
                partition.setConnectionDict(values, slave_reference=reference)
            self.log.info("connection parameters of %s: %s", target, ", ".join(values) or "none")
        return []
