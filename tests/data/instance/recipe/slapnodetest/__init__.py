"""Test-only buildout recipes used by the instance profiles of tests/data/instance.

The tests copy this directory, as an unpacked egg, into the eggs directory of a fake software
release, so instance buildouts find it offline without the recipes of the real project.
"""
import os
import time

import zc.buildout

EGG_PATH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Config:
    """Read the partition's instance parameters from the master: `configuration.<key>` options."""

    def __init__(self, buildout, name, options):
        from slapos.slap import slap

        connection = slap()
        connection.initializeConnection(options["url"], key_file=options.get("key") or None,
                                        cert_file=options.get("cert") or None,
                                        master_ca_file=options.get("master-ca") or None)
        partition = connection.registerComputerPartition(options["computer"], options["partition"])
        for key, value in partition.getInstanceParameterDict().items():
            if isinstance(value, str):
                options["configuration." + key] = value
        options["egg-path"] = EGG_PATH

    def install(self):
        return []

    update = install


class File:
    """Write `content` to `path` with `mode` (octal)."""

    def __init__(self, buildout, name, options):
        self.options = options

    def install(self):
        path = self.options["path"]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(self.options.get("content", "").strip() + "\n")
        os.chmod(tmp, int(self.options.get("mode", "644"), 8))
        os.replace(tmp, path)
        return [path]

    update = install


class Fail:
    """A part that fails (a broken instance profile)."""

    def __init__(self, buildout, name, options):
        self.options = options

    def install(self):
        raise zc.buildout.UserError(self.options.get("message", "failing on purpose"))

    update = install


class Sleep:
    """Sleep `seconds` the first time only (a `flag` file remembers): a slow buildout to kill."""

    def __init__(self, buildout, name, options):
        self.options = options

    def install(self):
        flag = self.options["flag"]
        if not os.path.exists(flag):
            with open(flag, "w") as f:
                f.write(str(os.getpid()))
            time.sleep(float(self.options.get("seconds", "60")))
        return []

    update = install


class Environ:
    """Write the environment buildout runs with to `path` (one NAME=value per line)."""

    def __init__(self, buildout, name, options):
        self.options = options

    def install(self):
        path = self.options["path"]
        with open(path, "w") as f:
            f.write("".join(f"{k}={v}\n" for k, v in sorted(os.environ.items())))
        return [path]

    update = install
