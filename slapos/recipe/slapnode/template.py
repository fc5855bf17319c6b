"""slapnode:template — render a Jinja2 template into a file.

    [instance-profile]
    recipe = slapnode:template
    url = ${:_profile_base_location_}/instance.cfg.in     # or: inline = <template text>
    output = ${buildout:directory}/instance.cfg
    mode = 0644                                           # optional (default: the umask's)
    context =
        key python buildout:executable                    # one option of a section
        jsonkey slaves slap-configuration:slave-instance-list   # an option holding JSON, decoded
        section config slap-configuration                 # all options of a section, as a dict
        raw greeting Hello world                          # a literal string

The template is rendered with StrictUndefined (an unknown name is an error, not an empty string)
and keeps its trailing newline. Extra filter: `shquote` (shell-quote one word, e.g. a path put
into a wrapper's `command-line`). `{% include %}` finds files next to the template. Buildout's
`${...}` is not Jinja2 syntax, so a template of a buildout profile passes it through untouched.
The output is rewritten only when its content changes.
"""
from __future__ import annotations

import json
import shlex
from pathlib import Path

from .common import Recipe as _Base
from .common import write_file


class Recipe(_Base):
    def __init__(self, buildout, name, options):
        super().__init__(buildout, name, options)
        if bool(options.get("url", "").strip()) == ("inline" in options):
            raise self.error("give exactly one of 'url' (template file) or 'inline' (template text)")
        self.output = self.path("output")
        options["output"] = str(self.output)
        # read now, not at install time: buildout learns which sections this part uses while
        # it initializes parts, and installs those first
        self.values = self.context()

    def context(self) -> dict:
        context = {}
        for line in self.lines("context"):
            kind, _, rest = line.partition(" ")
            name, _, value = rest.strip().partition(" ")
            value = value.strip()
            if not name or (kind != "raw" and not value):
                raise self.error(f"context line {line!r}: expected '<kind> <name> <value>'")
            if kind == "raw":
                context[name] = value
            elif kind == "section":
                context[name] = dict(self.buildout[value])
            elif kind in ("key", "jsonkey"):
                section, colon, option = value.partition(":")
                if not colon:
                    raise self.error(f"context line {line!r}: expected <section>:<option>")
                text = self.buildout[section or self.name][option]
                if kind == "key":
                    context[name] = text
                else:
                    try:
                        context[name] = json.loads(text)
                    except ValueError as e:
                        raise self.error(f"context {name}: {value} is not JSON ({e})") from None
            else:
                raise self.error(f"context line {line!r}: kind must be key, jsonkey, section or raw")
        return context

    def render(self) -> str:
        import jinja2

        if "inline" in self.options:
            loader, source, where = jinja2.BaseLoader(), self.options["inline"], "inline template"
        else:
            from zc.buildout.download import Download

            url = self.options["url"].strip()
            path, is_temp = Download(self.buildout["buildout"])(url)
            try:
                source = Path(path).read_text(encoding="utf-8")
            finally:
                if is_temp:
                    Path(path).unlink()
            loader, where = jinja2.FileSystemLoader(str(Path(path).parent)), url
        env = jinja2.Environment(
            loader=loader, undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False
        )
        env.filters["shquote"] = shlex.quote
        try:
            return env.from_string(source).render(self.values)
        except jinja2.TemplateError as e:
            line = f" line {e.lineno}" if getattr(e, "lineno", None) else ""
            raise self.error(f"cannot render {where}{line}: {e}") from None

    def install(self):
        write_file(self.output, self.render(), self.mode())
        return [str(self.output)]
