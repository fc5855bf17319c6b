"""slapproxy: a SLAP master for one machine (one process, one SQLite file).

Layers, top to bottom: `server` (waitress) → `app` (thin WSGI router: decode the form, call the
domain, encode the answer) → `allocation` / `computers` (the rules) → `db` (schema, migrations,
transactions). `documents` builds the SLAP records sent on the wire. The proxy never imports
`slapos.grid`.
"""
