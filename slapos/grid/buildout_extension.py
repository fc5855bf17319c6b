"""`${:_profile_base_location_}` for upstream zc.buildout, and the buildout entry point the node runs.

Software releases of the SlapOS ecosystem write `url = ${:_profile_base_location_}/instance.cfg.in`
to name a file that sits next to the profile defining that option. Upstream zc.buildout (PyPI) does
not know this substitution: it comes from SlapOS' fork. We provide it in two ways that give the
same result:

* `main()` — what the node runs (`python -m slapos.grid.buildout_extension`, and the
  `bin/buildout` script written in each software directory for people who re-run a build by
  hand). Before buildout reads any profile it wraps buildout's INI parser so that every value
  containing `${:_profile_base_location_}` gets the location (directory or URL "directory") of
  the very file it was read from: exact even for `+=` built from several files, for the
  `[buildout]` section and for nested `extends` across directories and URLs.
* `extension(buildout)` — the `zc.buildout.extension` entry point (`extensions = slapnode` in a
  profile), for people who run a stock `buildout`. Extensions load after the profiles are parsed,
  so it rewrites the parsed-but-not-yet-substituted values, recomputing each from buildout's own
  annotation history (which records the file of every `=`, `+=` and `-=`). It cannot help values
  of the `[buildout]` section itself (those are substituted before extensions load).

The substitution is purely textual and happens before buildout's own `${section:option}`
substitution, like in SlapOS' buildout. `${other-section:_profile_base_location_}` is not
supported (it would need a real option in every section, which upstream buildout would report as
unused in every part).

This module is imported inside buildout processes only: keep it free of node imports.
"""
from __future__ import annotations

import os
import re
import sys

MARKER = "${:_profile_base_location_}"
_DOWNLOADED = " (downloaded as "


_is_url = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://").match


def profile_base(filename: str) -> str:
    """The location a profile's relative names are resolved against, as buildout computes it:
    the URL up to the last `/` for URLs, the absolute directory for files."""
    if _DOWNLOADED in filename:  # buildout names downloaded profiles "URL (downloaded as PATH)"
        filename = filename.split(_DOWNLOADED, 1)[0]
    if _is_url(filename):
        return filename[: filename.rfind("/")]
    return os.path.dirname(os.path.abspath(filename))


def substitute_sections(sections: dict, base: str) -> None:
    """Replace the marker in every value of freshly parsed `{section: {option: value}}`."""
    for options in sections.values():
        for key, value in options.items():
            if isinstance(value, str) and MARKER in value:
                options[key] = value.replace(MARKER, base)


def install_parse_hook() -> None:
    """Wrap zc.buildout's INI parser so each profile's values get its location (idempotent)."""
    import zc.buildout.configparser as buildout_configparser

    original = buildout_configparser.parse
    if getattr(original, "_slapnode_profile_base", False):
        return

    def parse(fp, fpname, *args, **kwargs):
        sections = original(fp, fpname, *args, **kwargs)
        substitute_sections(sections, profile_base(str(fpname)))
        return sections

    parse._slapnode_profile_base = True  # type: ignore[attr-defined]
    buildout_configparser.parse = parse


def _rebuild_from_history(sectionkey) -> str | None:
    """Recompute an annotated value with the marker replaced per origin file, or None if buildout's
    history does not explain the value (then the caller falls back to the last source)."""
    history = list(getattr(sectionkey, "history", []))
    start = None
    for index in range(len(history) - 1, -1, -1):
        if history[index].operation in ("SET", "OVERRIDE", "DIRECTORY"):
            start = index
            break
    if start is None:
        return None

    def fix(item) -> str:
        value = item.value
        if MARKER in value and item.source not in ("DEFAULT_VALUE", "COMPUTED_VALUE", "COMMAND_LINE_VALUE"):
            value = value.replace(MARKER, profile_base(item.source))
        return value

    plain, fixed = history[start].value, fix(history[start])
    for item in history[start + 1 :]:
        if item.operation == "ADD":
            plain = "\n".join(plain.split("\n") + item.value.split("\n"))
            fixed = "\n".join(fixed.split("\n") + fix(item).split("\n"))
        elif item.operation == "REMOVE":
            removed, removed_fixed = item.value.split("\n"), fix(item).split("\n")
            plain = "\n".join(v for v in plain.split("\n") if v not in removed)
            fixed = "\n".join(v for v in fixed.split("\n") if v not in removed_fixed)
        else:
            return None
    if plain != sectionkey.value:
        return None
    return fixed


# [buildout] keys the node writes into every software release's buildout.cfg: recipes of the
# ecosystem (slapos.recipe.cmmi & co) read them, upstream buildout would call them unused.
NODE_OPTIONS = ("shared-part-list", "build-time-part-list")


def extension(buildout) -> None:
    """zc.buildout extension entry point: resolve the marker in the parsed, unsubstituted profile."""
    if getattr(buildout, "_slapnode_extension_done", False):
        return
    buildout._slapnode_extension_done = True
    try:
        options = buildout["buildout"]
        for key in NODE_OPTIONS:
            options.get(key)  # marks it used
    except Exception:  # a half-initialised buildout: nothing to mark
        pass
    annotated = getattr(buildout, "_annotated", None) or {}
    raw = getattr(buildout, "_raw", None) or {}
    initialized = getattr(buildout, "_data", {})
    for section, options in raw.items():
        if section in initialized:  # already substituted by buildout ([buildout], [versions])
            continue
        notes = annotated.get(section, {})
        for key, value in list(options.items()):
            if MARKER not in value or key not in notes:
                continue
            rebuilt = _rebuild_from_history(notes[key])
            if rebuilt is None:
                source = notes[key].source
                if source in ("DEFAULT_VALUE", "COMPUTED_VALUE", "COMMAND_LINE_VALUE"):
                    continue
                rebuilt = value.replace(MARKER, profile_base(source))
            options[key] = rebuilt


def _no_upgrade(self) -> None:
    """The node runs the zc.buildout of its own environment; a build must not replace it with
    another version downloaded into the software release (and restart itself) in newest mode."""


def main(argv: list[str] | None = None) -> int:
    """Run upstream zc.buildout's command line with `${:_profile_base_location_}` support."""
    install_parse_hook()
    import zc.buildout.buildout as zc_buildout

    zc_buildout.Buildout._maybe_upgrade = _no_upgrade
    original_load = zc_buildout.Buildout._load_extensions
    if not getattr(original_load, "_slapnode", False):

        def load_extensions(self):
            extension(self)
            return original_load(self)

        load_extensions._slapnode = True  # type: ignore[attr-defined]
        zc_buildout.Buildout._load_extensions = load_extensions
    try:
        zc_buildout.main(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as e:
        code = e.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
