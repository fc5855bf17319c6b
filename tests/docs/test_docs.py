"""The manual builds with warnings as errors, documents every command, option and configuration key,
and the README stays short."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
sys.path.insert(0, str(DOCS / "_ext"))

import slapos_config_keys  # noqa: E402
import slapos_reference  # noqa: E402


def test_every_command_and_option_has_help():
    parser, commands = slapos_reference.full_parser()
    missing = [
        f"slapos {' '.join(c.path)} {a.option_strings or a.dest}"
        for c in commands
        for a in slapos_reference.documented_actions(c.parser)
        if not (a.help or "").strip()
    ]
    missing += [f"slapos {' '.join(c.path)}" for c in commands if not c.help.strip()]
    missing += [f"slapos {a.option_strings}" for a in slapos_reference.documented_actions(parser, False)
                if not (a.help or "").strip()]
    assert not missing, "without help text: " + ", ".join(missing)


def test_every_command_and_option_is_in_the_reference():
    pages = slapos_reference.pages()
    _parser, commands = slapos_reference.full_parser()
    groups = {group: f"{name}.md" for name, group, _ in slapos_reference.groups()}
    problems = []
    for command in commands:
        page = pages[groups.get(command.path[:-1], "")] if command.path[:-1] in groups else None
        if page is None:
            problems.append(f"slapos {' '.join(command.path)}: its group has no page")
            continue
        if f"### {' '.join(('slapos', *command.path))}\n" not in page:
            problems.append(f"slapos {' '.join(command.path)}: no section")
        for action in slapos_reference.documented_actions(command.parser):
            for name in action.option_strings or [action.metavar or action.dest]:
                if name not in page:
                    problems.append(f"slapos {' '.join(command.path)} {name}: not in {groups[command.path[:-1]]}")
    assert not problems, "\n".join(problems)


def test_the_checker_notices_an_undocumented_option():
    parser = argparse.ArgumentParser()
    parser.add_argument("--documented", help="yes")
    parser.add_argument("--silent")
    assert [a.dest for a in slapos_reference.documented_actions(parser) if not a.help] == ["silent"]


def test_every_configuration_key_the_code_reads_is_described():
    keys = slapos_config_keys.all_keys()
    described = slapos_config_keys.example_keys()
    undocumented = [f"[{k.section}] {k.name} (read by {', '.join(sorted(k.readers))})" for k in keys
                    if (k.section, k.name) not in described and (k.section, k.name) not in slapos_config_keys.IGNORED]
    assert not undocumented, "describe these keys in slapos.cfg.example:\n" + "\n".join(undocumented)
    assert all(k.description for k in keys), [k.name for k in keys if not k.description]
    page = slapos_reference.render_configuration()
    assert all(f"`{k.name}`" in page for k in keys)


def test_configuration_defaults_come_from_the_code():
    keys = {(k.section, k.name): k for k in slapos_config_keys.all_keys()}
    assert keys[("slapos", "maximum_periodicity")].default == "86400"
    assert keys[("slapos", "computer_id")].default == "(required)"
    assert keys[("slapproxy", "max_request_size")].default == str(16 * 1024 * 1024)
    assert keys[("slapformat", "software_user")].default == "slapsoft"


def test_exit_codes_are_documented():
    from slapos.base import errors

    page = slapos_reference.render_exit_codes()
    for name in dir(errors):
        if name.startswith("EXIT_"):
            assert f"`{getattr(errors, name)}` ({name})" in page
            assert slapos_reference.EXIT_MEANINGS.get(name), f"{name} has no meaning in EXIT_MEANINGS"


def test_readme_is_short():
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) <= 200


@pytest.mark.slow
@pytest.mark.parametrize("builder", ["html", "man"])
def test_docs_build_without_warnings(tmp_path, builder):
    """`make docs` / `make man`: sphinx-build with warnings as errors."""
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", builder, "-d", str(tmp_path / "doctrees"),
         str(DOCS), str(tmp_path / builder)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    if builder == "man":
        pages = {p.name for p in (tmp_path / "man").iterdir()}
        assert {"slapos.1", "slapos-node.1", "slapos-proxy.1", "slapos-configure.1", "slapos.cfg.5"} <= pages
