"""The unit files that run `slapos node run`: a systemd unit and a supervisord program section.

Generated here (with the paths of this installation) by `slapos node run --print-systemd-unit`
and `--print-supervisord-program`; contrib/systemd/slapos-node.service and
contrib/supervisord/slapos-node.conf are the same text for the default paths.
"""
from __future__ import annotations

from pathlib import Path

DEFAULT_CFG = Path("/etc/opt/slapos/slapos.cfg")
DEFAULT_EXECUTABLE = "/usr/local/bin/slapos"

SYSTEMD = """\
# `slapos node run` as a systemd service: /etc/systemd/system/slapos-node.service (docs/daemon.md).
# It replaces the cron block (/etc/cron.d/slapos-node) and the slapos-node-*.timer units: remove or
# disable them first; both at once would only make one of them skip its runs (exit 10).
[Unit]
Description=slapos node run: the node's reconcile loop (software, instance, report, collect, format)
After=network-online.target slapos-proxy.service
Wants=network-online.target
Conflicts=slapos-node-instance.timer slapos-node-software.timer slapos-node-report.timer

[Service]
Type=simple
ExecStart={executable} node run --cfg {cfg}
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=5
# 5: bad configuration; 10: another `slapos node run` holds its lock: restarting would not help
RestartPreventExitStatus=5 10
# SIGTERM: the running instance pass finishes (at most [slapos] run_stop_timeout, default 60 s)
TimeoutStopSec=90
# only the daemon is stopped: the node's supervisord and the partitions' services it started keep
# running (as under cron), and the next start finds them
KillMode=process
# the journal adds the time itself; each line keeps its level, step and partition
Environment=SLAPNODE_LOG_FORMAT=text

[Install]
WantedBy=multi-user.target
"""

SUPERVISORD = """\
; `slapos node run` under supervisord (docs/daemon.md): add to the supervisord that runs the node's
; services of the host (not the node's own supervisord, which the daemon starts itself).
; Remove the cron block first (/etc/cron.d/slapos-node).
[program:slapos-node]
command = {executable} node run --cfg {cfg}
autostart = true
autorestart = unexpected
exitcodes = 0,5,10
; SIGTERM: the running instance pass finishes (at most [slapos] run_stop_timeout, default 60 s)
stopsignal = TERM
stopwaitsecs = 90
; only the daemon: the node's supervisord and the partitions' services keep running
stopasgroup = false
killasgroup = false
redirect_stderr = true
stdout_logfile = /var/log/slapos/slapos-node-run.log
environment = SLAPNODE_LOG_FORMAT="text"
"""


def service_text(kind: str, cfg: Path | None = None, executable: str | None = None) -> str:
    if executable is None:
        from .standalone import slapos_executable

        executable = slapos_executable()
    template = SYSTEMD if kind == "systemd" else SUPERVISORD
    return template.format(executable=executable, cfg=cfg or DEFAULT_CFG)
