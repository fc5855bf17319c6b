"""Tiny buildout recipes for slapnode's tests of `slapos node software` (no network needed).

write: write `content` (or the content of the file `source`) to `output`
fail:  fail with `message`
sleep: write `started` (a path), then sleep `seconds` unless the file `skip-if` exists
"""
import os
import time

import zc.buildout


class Write:
    def __init__(self, buildout, name, options):
        self.options = options
        options.setdefault("output", os.path.join(buildout["buildout"]["parts-directory"], name, "out.txt"))

    def install(self):
        output = self.options["output"]
        if "source" in self.options:
            with open(self.options["source"]) as f:
                content = f.read()
        else:
            content = self.options.get("content", "")
        os.makedirs(os.path.dirname(output), exist_ok=True)
        with open(output, "w") as f:
            f.write(content)
        return [output]

    update = install


class Fail:
    def __init__(self, buildout, name, options):
        self.options = options

    def install(self):
        raise zc.buildout.UserError(self.options.get("message", "failing on purpose"))

    update = install


class Sleep:
    def __init__(self, buildout, name, options):
        self.options = options

    def install(self):
        with open(self.options["started"], "w") as f:
            f.write(str(os.getpid()))
        skip = self.options.get("skip-if")
        if not (skip and os.path.exists(skip)):
            time.sleep(float(self.options.get("seconds", "60")))
        return []

    update = install
