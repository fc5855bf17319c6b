"""Legacy entry points, bash completion, `--help` everywhere, one-line usage errors."""
from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest

from slapos.cli.legacy import LEGACY, find_subparser, translate
from slapos.cli.main import build_parser, load_commands

from .conftest import REPO, one_line_error, slapos_argv

BIN = REPO / ".venv" / "bin"


def run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, **kw)


def test_help_for_every_command():
    parser = build_parser(load_commands())
    result = run(slapos_argv("--help"))
    assert result.returncode == 0 and result.stdout.startswith("usage: slapos")
    paths = []

    def walk(p: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    if name in action._name_parser_map and sub is not None:
                        walk(sub, (*path, name))
        if path:
            paths.append(path)

    walk(parser, ())
    for command in ("request", "supply", "remove", "list", "info", "console", "completion", "complete"):
        assert (command,) in paths
    aliases = {("complete",): ("completion",)}  # an alias shows the usage of its command
    for path in sorted(set(paths)):
        result = run(slapos_argv(*path, "--help"))
        assert result.returncode == 0, (path, result.stderr)
        assert result.stdout.startswith(f"usage: slapos {' '.join(aliases.get(path, path))}"), path


def test_unknown_commands_and_options_are_one_line_exit_5():
    for args in (["no-such-command"], ["request"], ["request", "a", "b", "--state", "paused"],
                 ["list", "--nope"], ["node", "no-such-sub"]):
        result = run(slapos_argv(*args))
        assert result.returncode == 5, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in result.stderr, (args, result.stderr)


def _target(path):
    return find_subparser(build_parser(load_commands()), path)


@pytest.mark.parametrize(
    "name, argv, expected",
    [
        ("slapproxy", ["-u", "db.sqlite", "--port", "8081", "/etc/opt/slapos/slapos.cfg"],
         ["--cfg", "/etc/opt/slapos/slapos.cfg", "-u", "db.sqlite", "--port", "8081"]),
        ("slapformat", ["--alter_user", "False", "--now", "-c", "slapos.cfg"],
         ["--cfg", "slapos.cfg", "--alter_user", "False", "--now"]),
        ("slapconsole", ["-u", "http://m/", "-k", "key.pem", "-c", "cert.pem", "client.cfg", "script.py"],
         ["--cfg", "client.cfg", "-u", "http://m/", "-k", "key.pem", "-c", "cert.pem", "script.py"]),
        ("slapgrid-cp", ["slapos.cfg", "--supervisord-socket", "/s.sock", "--buildout", "/b", "--key_file", "k",
                         "--now", "--maximal_delay=5", "--only_cp", "slappart0"],
         ["--cfg", "slapos.cfg", "--supervisord-socket", "/s.sock", "--buildout", "/b", "--key_file", "k",
          "--now", "--maximal_delay=5", "--only_cp", "slappart0"]),
        ("slapconsole", ["script.py", "arg"], ["script.py", "arg"]),
    ],
)
def test_translation_of_old_command_lines(name, argv, expected):
    legacy = LEGACY[name]
    target = _target(legacy.path)
    assert target is not None
    assert translate(legacy, argv, target) == expected


def test_translation_of_slapgrid_options():
    legacy = LEGACY["slapgrid-sr"]
    parser = argparse.ArgumentParser()
    parser.add_argument("--cfg")
    parser.add_argument("--software-root")
    parser.add_argument("--only-sr")
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--now", action="store_true")
    parser.add_argument("--supervisord-socket")
    argv = ["--software_root=/opt/slapgrid", "--only_sr", "abc", "--develop", "--supervisord-socket", "/x.sock",
            "-c", "--now", "/etc/opt/slapos/slapos.cfg"]
    # passed through (the command accepts it, with no effect), no longer dropped
    assert translate(legacy, argv, parser) == [
        "--cfg", "/etc/opt/slapos/slapos.cfg", "--software-root=/opt/slapgrid", "--only-sr", "abc", "--force",
        "--supervisord-socket", "/x.sock", "--now",
    ]
    # an unknown option is kept, so the command reports it
    assert translate(legacy, ["--bogus"], parser) == ["--bogus"]


def test_legacy_scripts_run_the_new_commands(client, tmp_path):
    # slapconsole: old spelling (configuration as a positional argument) running a script
    script = tmp_path / "s.py"
    script.write_text("print(supply('/srv/legacy.cfg'))\n")
    result = run([str(BIN / "slapconsole"), str(client.config), str(script)], env=client.env)
    assert result.returncode == 0, result.stderr
    assert "Supplied '/srv/legacy.cfg' to be available" in result.stdout
    # every legacy command answers --help with the new command's help
    for name, legacy in LEGACY.items():
        if _target(legacy.path) is None:
            continue  # that command group is not built in this tree
        result = run([str(BIN / name), "--help"])
        assert result.returncode == 0, (name, result.stderr)
        assert f"usage: slapos {' '.join(legacy.path)}" in result.stdout, name
    # a bad option still fails like the new command: one line, exit 5
    result = run([str(BIN / "slapproxy"), "--no-such-option", str(client.config)])
    assert result.returncode == 5
    assert "--no-such-option" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def _complete(script: Path, *words: str) -> list[str]:
    """COMPREPLY of the generated function for the words typed (the last one is being completed)."""
    quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in ("slapos", *words))
    program = f'source {script}; COMP_WORDS=({quoted}); COMP_CWORD={len(words)}; _slapos; printf "%s\\n" "${{COMPREPLY[@]}}"'
    result = run(["bash", "--norc", "--noprofile", "-c", program])
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line]


def test_bash_completion(tmp_path):
    result = run(slapos_argv("complete"))
    assert result.returncode == 0, result.stderr
    script = tmp_path / "slapos.bash"
    script.write_text(result.stdout)
    assert "complete -o default -F _slapos slapos" in result.stdout
    assert _complete(script, "req") == ["request"]
    assert set(_complete(script, "")) >= {"request", "supply", "remove", "list", "info", "console", "node", "proxy"}
    assert _complete(script, "request", "x", "y", "--state", "") == ["started", "stopped", "destroyed"]
    assert "--parameters-file" in _complete(script, "request", "--par")
    assert "--parameters_file" not in _complete(script, "request", "--par")  # old spellings not offered
    # the value of --cfg is skipped when finding the command ("node" here is a file name)
    assert _complete(script, "request", "--cfg", "node", "--form") == ["--format"]
    assert "format" in _complete(script, "--debug", "node", "")
    (tmp_path / "params.json").write_text("{}")
    assert _complete(script, "request", "--parameters-file", str(tmp_path / "par")) == [str(tmp_path / "params.json")]


def test_option_errors_of_client_commands_are_one_line(client):
    result = client.run("request", "x", "y", "--parameters", "a=1", "--parameters-file", "p.json")
    assert result.returncode == 5
    assert "not allowed with argument" in result.stderr
    result = client.run("info")
    assert result.returncode == 5
    assert "required: NAME" in result.stderr
    result = client.run("supply", "--cfg", str(client.config), cfg=False)
    assert result.returncode == 5
    one_line = result.stderr.strip().splitlines()
    assert len(one_line) == 1
    # configure client refuses to overwrite without --force
    target = client.home / ".slapos" / "slapos-client.cfg"
    target.parent.mkdir()
    target.write_text("[slapos]\nmaster_url = http://x/\n")
    result = client.run("configure", "client", "--master-url", "http://127.0.0.1:1/", cfg=False)
    assert result.returncode == 5
    assert "use --force" in one_line_error(result)


@pytest.mark.parametrize("name, argv", [
    ("slapgrid-sr", ["--now", "--develop", "--only_sr", "abc", "--maximal_delay=0", "-c", "--logfile", "x.log", "s.cfg"]),
    ("slapgrid-cp", ["--now", "--all", "--only_cp", "slappart0", "--supervisord-socket", "/x", "s.cfg"]),
    ("slapgrid-ur", ["--now", "--maximal_delay", "0", "--pidfile", "/x.pid", "s.cfg"]),
    ("slapformat", ["--now", "--alter_user", "True", "-l", "f.log", "-n", "-c", "s.cfg"]),
    ("bang", ["-m", "hello world", "s.cfg"]),
])
def test_old_command_lines_parse_with_the_real_commands(name, argv):
    legacy = LEGACY[name]
    target = _target(legacy.path)
    if target is None:
        pytest.skip(f"slapos {' '.join(legacy.path)} is not built in this tree")
    translated = translate(legacy, argv, target)
    args, extra = target.parse_known_args(translated)
    assert extra == [], translated
    assert args.cfg == "s.cfg"
