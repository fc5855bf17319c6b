"""The `slapos` command: one thin module per command group (parse, call, print)."""
