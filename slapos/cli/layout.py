"""Where a node's files go by default: shared by `configure` (its options' help) and `standalone`
(which lays the node out). A module of its own so that neither imports the other, and so that
`slapos` pays nothing at start-up for the standalone machinery."""
from __future__ import annotations

DEFAULT_CONFIGURATION_DIRECTORY = "/etc/opt/slapos"
DEFAULT_BUILDOUT_DIRECTORY = "/opt/slapos"
DEFAULT_STANDALONE_ROOT = "~/slapos"
CLIENT_CONFIG = "~/.slapos/slapos-client.cfg"  # = slapos.base.config.DEFAULT_CLIENT_CONFIG
