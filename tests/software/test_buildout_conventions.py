"""SlapOS buildout conventions on upstream zc.buildout, in real (offline) buildout runs: option
values that are not strings, eggs of buildout >= 5 (`*.egg/*.dist-info`) found offline, an eggs
directory already ending in `v5`. The recipe egg is written by the test in the v5 layout."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from slapos.grid.buildout import run_buildout
from slapos.grid.buildout_extension import as_text

RECIPE = '''
class Set:
    """Stores values that are not strings, as slapos.cookbook's slapconfiguration does."""
    def __init__(self, buildout, name, options):
        options["ipv4"] = {"10.0.0.2", "10.0.0.1"}
        options["configuration"] = {"port": 8080}
        options["count"] = 3

    def install(self):
        return []

    update = install


class Write:
    def __init__(self, buildout, name, options):
        self.options = options
        self.raw = buildout["set"]["ipv4"]  # a recipe reading the value gets the object

    def install(self):
        with open(self.options["output"], "w") as f:
            f.write(self.options["text"] + "\\n" + type(self.raw).__name__ + "\\n")
        return [self.options["output"]]

    update = install
'''

PROFILE = """[buildout]
parts = write
eggs-directory = {eggs}
develop-eggs-directory = {directory}/develop-eggs
offline = true

[set]
recipe = probe

[write]
recipe = probe:write
output = ${{buildout:directory}}/out.txt
text = ${{set:ipv4}} ${{set:configuration}} ${{set:count}}
"""


def write_v5_egg(eggs: Path) -> None:
    """An egg as zc.buildout >= 5 installs one: `<name>.egg/` holding the code and a .dist-info."""
    egg = eggs / f"probe-1.0-py{sys.version_info[0]}.{sys.version_info[1]}.egg"
    info = egg / "probe-1.0.dist-info"
    info.mkdir(parents=True)
    (egg / "probe_recipe.py").write_text(RECIPE)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: probe\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[zc.buildout]\ndefault = probe_recipe:Set\nwrite = probe_recipe:Write\n")
    (info / "top_level.txt").write_text("probe_recipe\n")


def test_offline_v5_eggs_and_non_string_values(tmp_path):
    directory = tmp_path / "partition"
    directory.mkdir()
    eggs = tmp_path / "software" / "eggs" / "v5"
    write_v5_egg(eggs)
    (directory / "buildout.cfg").write_text(PROFILE.format(eggs=eggs, directory=directory))
    result = run_buildout(directory, None, None, timeout=120)
    assert result.ok, result.output
    text, kind = (directory / "out.txt").read_text().splitlines()
    assert text == '["10.0.0.1", "10.0.0.2"] {"port": 8080} 3'
    assert kind == "set"
    assert not (eggs / "v5").exists()  # the versioned eggs directory was not versioned again
    # saved as text for the installed part that used them
    assert '["10.0.0.1", "10.0.0.2"]' in (directory / ".installed.cfg").read_text()


def test_as_text():
    assert as_text("x") == "x"
    assert as_text(["b", "a"]) == '["b", "a"]'
    assert json.loads(as_text({"b": [1], "a": None})) == {"a": None, "b": [1]}
    assert as_text(frozenset({"b", "a"})) == '["a", "b"]'
    assert as_text(8080) == "8080"
