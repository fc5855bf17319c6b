"""An XML-RPC extension loaded *inside* supervisord: update one process group program by program.

supervisord's own interface can only replace a whole process group (remove it, which needs every
process stopped, then add it again), so changing one service of a partition would restart all of
them. With this extension (namespace `slapnode`, declared in supervisord.conf as an
`[rpcinterface:slapnode]` section) the node:

1. calls `supervisor.reloadConfig()` as usual;
2. asks `slapnode.diffProcessGroup(group)` which programs of a changed group were added, changed
   or removed;
3. stops only the changed and removed ones (`supervisor.stopProcess`);
4. calls `slapnode.refreshProcessGroup(group)`: the group takes its new configuration, keeping
   the running process objects of unchanged programs untouched.

supervisord is single-threaded, so these run atomically between two turns of its loop. A
supervisord started without this extension answers UNKNOWN_METHOD, and the node falls back to
replacing the whole group.
"""
from __future__ import annotations

import os

from supervisor.process import ProcessGroup
from supervisor.states import STOPPED_STATES
from supervisor.xmlrpc import Faults, RPCError

API_VERSION = "1"


class SlapnodeNamespaceRPCInterface:
    def __init__(self, supervisord):
        self.supervisord = supervisord

    def _configs(self, name: str):
        group = self.supervisord.process_groups.get(name)
        if group is None:
            raise RPCError(Faults.BAD_NAME, name)
        for config in self.supervisord.options.process_group_configs:
            if config.name == name:
                new = config
                break
        else:
            raise RPCError(Faults.BAD_NAME, f"{name} is not in the configuration any more")
        # only plain program groups: event listener pools and FastCGI groups keep the stock path
        if type(group) is not ProcessGroup or type(new) is not type(group.config):
            raise RPCError(Faults.INCORRECT_PARAMETERS, f"{name} is not a plain process group")
        return group, new

    def getAPIVersion(self):
        """Version of this extension.

        @return string version
        """
        return API_VERSION

    def diffProcessGroup(self, name):
        """Compare the active configuration of group `name` with the one last read by reloadConfig.

        @param string name   process group name
        @return struct       {'added': [names], 'changed': [names], 'removed': [names]}
        """
        group, new = self._configs(name)
        old = {c.name: c for c in group.config.process_configs}
        fresh = {c.name: c for c in new.process_configs}
        return {
            "added": sorted(n for n in fresh if n not in old),
            "changed": sorted(n for n in fresh if n in old and fresh[n] != old[n]),
            "removed": sorted(n for n in old if n not in fresh),
        }

    def refreshProcessGroup(self, name):
        """Make group `name` use the configuration last read by reloadConfig, program by program.

        Unchanged programs keep their process (running or not); changed and removed programs must
        be stopped first (fault STILL_RUNNING otherwise); added and changed programs are created
        stopped.

        @param string name   process group name
        @return boolean      true when done
        """
        group, new = self._configs(name)
        fresh = {c.name: c for c in new.process_configs}
        for pname, process in group.processes.items():
            config = fresh.get(pname)
            if (config is None or config != process.config) and process.get_state() not in STOPPED_STATES:
                raise RPCError(Faults.STILL_RUNNING, f"{name}:{pname}")
        new.after_setuid()  # resolve AUTO log file names, as add_process_group does
        processes = {}
        for pname, config in fresh.items():
            current = group.processes.get(pname)
            if current is not None and current.config == config:
                processes[pname] = current
            else:
                processes[pname] = config.make_process(group)
        group.processes = processes
        group.config = new
        return True

    def loadProcessGroupFile(self, name, path):
        """Read the file of group `name` alone (instead of every file, as reloadConfig does) into
        the configuration, and compare it with the active group.

        A missing file means the group is gone from the configuration. The answer says what to do:
        'state' is 'absent' (neither in the file nor active), 'added' (not active yet: add it),
        'removed' (active, no file: stop and remove it), 'unchanged', 'changed' (program by program:
        stop the changed and removed ones, then refreshProcessGroup) or 'replaced' (not a plain
        group: remove it and add it again).

        @param string name   process group name
        @param string path   the file defining it
        @return struct       {'state': string, 'added': [names], 'changed': [names], 'removed': [names]}
        """
        import configparser

        from supervisor.options import UnhosedConfigParser

        options = self.supervisord.options
        parser = UnhosedConfigParser()
        parser.expansions = options.environ_expansions
        try:
            parser.read(path)
            parser.expand_here(os.path.abspath(os.path.dirname(path)))
            configs = options.process_groups_from_parser(parser)
        except (ValueError, configparser.Error) as e:
            raise RPCError(Faults.CANT_REREAD, f"{path}: {e}") from None
        if any(c.name != name for c in configs):
            raise RPCError(Faults.CANT_REREAD, f"{path} defines other groups than {name}")
        environment = getattr(options.configroot.supervisord, "environment", None) or {}
        for config in configs:  # as read_config does for every group
            for process in config.process_configs:
                merged = dict(environment)
                merged.update(process.environment or {})
                process.environment = merged
        options.process_group_configs = [c for c in options.process_group_configs if c.name != name] + configs
        group = self.supervisord.process_groups.get(name)
        empty = {"added": [], "changed": [], "removed": []}
        if not configs:
            return {"state": "removed" if group is not None else "absent", **empty}
        if group is None:
            return {"state": "added", **empty, "added": sorted(c.name for c in configs[0].process_configs)}
        if group.config == configs[0]:
            return {"state": "unchanged", **empty}
        if type(group) is not ProcessGroup or type(configs[0]) is not type(group.config):
            return {"state": "replaced", **empty}
        return {"state": "changed", **self.diffProcessGroup(name)}


def make_rpcinterface(supervisord, **config):
    """The factory named in supervisord.conf (`supervisor.rpcinterface_factory`)."""
    return SlapnodeNamespaceRPCInterface(supervisord)
