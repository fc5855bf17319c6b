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

import glob
import json
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


_versioned = re.compile(r"(^|[/\\])v\d+[/\\]?$").search


def keep_versioned_eggs_directory(sections: dict) -> None:
    """zc.buildout >= 5 keeps eggs in `<eggs-directory>/v5`. An instance profile of the SlapOS
    ecosystem names the software release's eggs directory as the software buildout computed it
    (`eggs-directory = ${buildout:eggs-directory}`, rendered to `.../eggs/v5`): buildout would
    look in `.../eggs/v5/v5`, find nothing, and fail offline. A profile whose eggs directory
    already ends with a version directory gets no second one (unless it says otherwise)."""
    options = sections.get("buildout")
    if not isinstance(options, dict):
        return
    value = options.get("eggs-directory")
    if isinstance(value, str) and "$" not in value and _versioned(value.strip()):
        options.setdefault("eggs-directory-version", "")


def install_parse_hook() -> None:
    """Wrap zc.buildout's INI parser so each profile's values get its location (idempotent)."""
    import zc.buildout.configparser as buildout_configparser

    original = buildout_configparser.parse
    if getattr(original, "_slapnode_profile_base", False):
        return

    def parse(fp, fpname, *args, **kwargs):
        sections = original(fp, fpname, *args, **kwargs)
        substitute_sections(sections, profile_base(str(fpname)))
        keep_versioned_eggs_directory(sections)
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


def find_eggs_offline() -> None:
    """zc.buildout >= 5 installs an egg as `<name>.egg/<name>.dist-info` (plus the package). It
    finds them again when it may install (the eggs directory is its `dest`), but not in offline
    mode, where the eggs directory is only a path to search: an instance profile (always offline)
    would not find the recipes its software release installed. In offline mode, the `*.egg`
    directories holding a `.dist-info` in each searched directory are searched too (idempotent)."""
    import zc.buildout.easy_install as easy_install

    original = easy_install.Installer._get_dest_dist_paths
    if getattr(original, "_slapnode", False):
        return

    def dest_dist_paths(self):
        found = original(self)
        if self._dest is None:
            for entry in self._path:
                pattern = os.path.join(glob.escape(entry), "*.egg", "*.dist-info")
                found.extend(os.path.dirname(p) for p in glob.glob(pattern))
        return list(dict.fromkeys(found))

    dest_dist_paths._slapnode = True  # type: ignore[attr-defined]
    easy_install.Installer._get_dest_dist_paths = dest_dist_paths


def as_text(value) -> str:
    """How a non-string option value reads inside `${section:option}`: containers as JSON,
    anything else as str()."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, set, frozenset, dict)):
        if isinstance(value, (set, frozenset)):
            value = sorted(value, key=str)
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def allow_non_string_values() -> None:
    """Recipes of the ecosystem store values that are not strings (slapos.cookbook's
    `slapconfiguration` stores lists, sets and dicts: `options['ipv4'] = {...}`): SlapOS' buildout
    accepts them, upstream refuses them with a TypeError. Here they are kept as they are for
    recipes that read them (`options['ipv4']`, a jinja2 template's `key` context), read as text
    inside `${...}` substitutions (see `as_text`) and saved as text in `.installed.cfg`."""
    import zc.buildout.buildout as zc_buildout

    options_class = zc_buildout.Options
    if getattr(options_class.__setitem__, "_slapnode", False):
        return
    original_get, original_save = options_class.get, zc_buildout._save_option

    def setitem(self, option, value):
        self._data[option] = value

    def get(self, option, default=None, seen=None):
        value = original_get(self, option, default, seen)
        if seen is not None and value is not None and not isinstance(value, str):
            return as_text(value)  # `seen` is only passed by substitutions
        return value

    def save_option(option, value, f):
        return original_save(option, as_text(value), f)

    setitem._slapnode = True  # type: ignore[attr-defined]
    options_class.__setitem__ = setitem
    options_class.get = get
    zc_buildout._save_option = save_option


def main(argv: list[str] | None = None) -> int:
    """Run upstream zc.buildout's command line with `${:_profile_base_location_}` support."""
    install_parse_hook()
    find_eggs_offline()
    allow_non_string_values()
    # recipes of the release get its own `slapos.*` modules (its slapos.core), not ours
    from slapos.grid import release_first

    release_first.install()
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
