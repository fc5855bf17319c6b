"""slapnode:wrapper — a program wrapper for supervisord (etc/service, etc/run) or for users (bin).

    [hello-service]
    recipe = slapnode:wrapper
    wrapper-path = ${directory:service}/hello-web
    command-line = ${buildout:executable} ${hello:server} --port 8080
    # one argument per line, each kept whole and literal: the place for instance parameters
    arguments =
        --message
        ${slap-configuration:configuration.message}
    environment =
        LANG=C.UTF-8
        HELLO_LOG=${directory:log}/hello.log

The wrapper is a small Python script that replaces itself with the program (`os.execvpe`): no
shell ever sees the arguments, so `$(...)`, `;`, quotes or globs in a parameter stay literal.
`command-line` is split like a POSIX shell would split words (shlex), without any expansion;
`arguments` adds one argument per line (a parameter containing spaces stays one argument).
`environment` lines `NAME=value` are added to the inherited environment. Arguments given to the
wrapper itself are appended. Mode 0750 (the partition user runs it).
"""
from __future__ import annotations

import re
import shlex

from .common import Recipe as _Base
from .common import python_script, write_file

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Recipe(_Base):
    def __init__(self, buildout, name, options):
        super().__init__(buildout, name, options)
        self.wrapper_path = self.path("wrapper-path")
        options["wrapper-path"] = str(self.wrapper_path)
        try:
            self.argv = shlex.split(options.get("command-line", ""), posix=True)
        except ValueError as e:
            raise self.error(f"command-line: {e} (quote it as a shell would, or use 'arguments')") from None
        # lines are kept verbatim (only the line break splits): an instance parameter given on
        # its own line is exactly one argument, whatever characters it holds
        self.argv += [line for line in options.get("arguments", "").splitlines() if line.strip()]
        if not self.argv:
            raise self.error("option 'command-line' is required (the program to run)")
        self.environment = {}
        for line in self.lines("environment"):
            key, equal, value = line.partition("=")
            key = key.strip()
            if not equal or not _ENV_NAME.match(key):
                raise self.error(f"environment line {line!r}: expected NAME=value")
            self.environment[key] = value.strip()

    def script(self) -> str:
        body = (
            "import os\n"
            "import sys\n"
            f"argv = {self.argv!r} + sys.argv[1:]\n"
            f"os.environ.update({self.environment!r})\n"
            "os.execvpe(argv[0], argv, os.environ)\n"
        )
        return python_script(self.python, f"slapnode:wrapper [{self.name}]", body)

    def install(self):
        write_file(self.wrapper_path, self.script(), 0o750)
        return [str(self.wrapper_path)]
