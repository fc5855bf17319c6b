"""slapnode:request — request another instance (or a shared one) and read its connection parameters.

    [backend]
    recipe = slapnode:request
    software-url = ${slap-connection:software-release-url}
    software-type = backend           # default: default
    name = backend-1                  # the instance title, unique within this instance tree
    config-message = Hello            # config-<key>: instance parameters of the requested instance
    sla-computer_guid = COMP-1        # sla-<key>: filter (SLA) parameters, optional
    shared = false                    # true: a shared ("slave") instance, hosted by a partition
                                      # of that software release and type
    return = url                      # connection parameters to read, space separated
    # optional: state (default: this partition's requested state, so a stopped tree stops its
    # children), serialisation = json-in-xml (parameters sent as one JSON `_` key and a
    # returned `_` unwrapped)

Afterwards `${backend:connection-url}` holds the published value. The request is made as soon as
the section is read, so other sections can use the values during the same run. When a `return`
key is not published yet (the instance is still being deployed), the option is empty and the part
fails with a message saying so: the master bumps this partition when the requested instance
publishes, so the node processes it again and the tree converges.

(The client library appends the title to the partition's `.slapos-request-transaction-<id>`
file when the node runs buildout: the node then reports which instances are still wanted.)
"""
from __future__ import annotations

from .common import Recipe as _Base
from .common import SlapConnection, slap_errors
from .config import as_option, unwrap_json_in_xml, wrap_json_in_xml

STATES = ("started", "stopped", "destroyed")


class Recipe(_Base):
    def __init__(self, buildout, name, options):
        super().__init__(buildout, name, options)
        connection = SlapConnection.from_recipe(self)
        software_url = self.required("software-url")
        title = self.required("name")
        software_type = options.get("software-type", "").strip() or "default"
        shared = self.flag("shared")
        state = options.get("state", "").strip() or connection.requested_state
        if state not in STATES:
            raise self.error(f"state = {state!r}: use one of {', '.join(STATES)}")
        serialisation = options.get("serialisation", "xml").strip() or "xml"
        if serialisation not in ("xml", "json-in-xml"):
            raise self.error(f"serialisation = {serialisation!r}: use xml or json-in-xml")
        parameters = {k[len("config-") :]: v for k, v in options.items() if k.startswith("config-")}
        if serialisation == "json-in-xml":
            parameters = wrap_json_in_xml(parameters)
        filter_kw = {k[len("sla-") :]: v for k, v in options.items() if k.startswith("sla-")}
        self.returns = options.get("return", "").split()
        self.title = title

        partition = connection.partition(self)
        kind = "shared instance" if shared else "instance"
        with slap_errors(self, f"requesting {kind} {title!r} of {software_url}"):
            requested = partition.request(
                software_release=software_url,
                software_type=software_type,
                partition_reference=title,
                shared=shared,
                partition_parameter_kw=parameters,
                filter_kw=filter_kw,
                state=state,
            )

        published = self._connection_parameters(requested)
        # a destroyed instance publishes nothing more: do not wait for it
        self.missing = [key for key in self.returns if key not in published and state != "destroyed"]
        for key in self.returns:
            options[f"connection-{key}"] = as_option(published.get(key))
        if self.missing:
            self.log.info("%s %r has not published %s yet", kind, title, ", ".join(self.missing))

    def _connection_parameters(self, requested) -> dict:
        """The published parameters, {} while the instance is not allocated or ready."""
        from slapos.slap import SlapException

        try:
            published = dict(requested.getConnectionParameterDict() or {})
        except SlapException as e:
            self.log.info("%r is not ready: %s", self.title, e)
            return {}
        try:
            return unwrap_json_in_xml(published)
        except ValueError:
            return published

    def install(self):
        if self.missing:
            raise self.error(
                f"{self.title!r} has not published {', '.join(self.missing)} yet (it is still being "
                "deployed): this partition is processed again once it publishes them"
            )
        return []
