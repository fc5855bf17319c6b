"""slapnode:mkdir — create directories (with their parents).

    [directory]
    recipe = slapnode:mkdir
    etc = ${buildout:directory}/etc
    service = ${:etc}/service
    promise = ${:etc}/promise
    log = ${buildout:directory}/var/log
    mode = 0750          # optional, default 0750; applied to every listed directory

Every option except `recipe` and `mode` (and buildout's own `_...` options) names a directory, so
other sections refer to them as `${directory:service}`. Directories are never removed by
buildout (they hold the instance's data); a directory deleted by hand comes back on the next run.
"""
from __future__ import annotations

import os

from .common import Recipe as _Base

_NOT_PATHS = {"recipe", "mode"}


class Recipe(_Base):
    def __init__(self, buildout, name, options):
        super().__init__(buildout, name, options)
        self.directory_mode = self.mode("mode", 0o750)
        self.paths = {}
        for key in sorted(options.keys()):
            if key in _NOT_PATHS or key.startswith("_"):
                continue
            path = self.path(key)
            options[key] = str(path)
            self.paths[key] = path

    def install(self):
        for key, path in self.paths.items():
            if path.exists() and not path.is_dir():
                raise self.error(f"{key} = {path}: exists and is not a directory")
            path.mkdir(mode=self.directory_mode, parents=True, exist_ok=True)
            # mkdir's mode goes through the umask; the listed directory gets exactly `mode`
            if (path.stat().st_mode & 0o7777) != self.directory_mode:
                os.chmod(path, self.directory_mode)
        return []
