"""What the user-side commands (`slapos request|supply|remove|list|info|console`) need besides the
SLAP library: the client configuration, product aliases, parameter files, and the local record of
requested instances. The command-line layer (`slapos.cli.client`) only parses and prints.

Every module here is cheap to import: `slapos request` is called in loops by scripts.
"""
