"""slapgrid: the node agent (software, instance, report runs)."""
