import subprocess
import sys

from slapos.cli.main import main

SLAPOS = [sys.executable, "-m", "slapos.cli.main"]


def run(*args, **kw):
    return subprocess.run([*SLAPOS, *args], capture_output=True, text=True, timeout=60, **kw)


def test_help_lists_commands():
    result = run("--help")
    assert result.returncode == 0
    assert "usage: slapos" in result.stdout


def test_unknown_command_is_a_usage_error():
    result = run("no-such-command")
    assert result.returncode == 5
    assert "invalid choice" in result.stderr


def test_every_command_has_help():
    from slapos.cli.main import load_commands

    for command in load_commands():
        code = None
        try:
            main([*command.path, "--help"])
        except SystemExit as e:  # argparse exits after printing help
            code = e.code
        assert code in (0, None), command.path


def test_only_the_selected_command_gets_its_options():
    from slapos.cli.main import build_parser, load_commands, select_command

    commands = load_commands()
    chosen = select_command(commands, ["--log-file", "node", "node", "instance", "--now"])
    assert chosen is not None and chosen.path == ("node", "instance")
    assert select_command(commands, ["--debug", "nosuch"]) is None
    parser = build_parser(commands, only=chosen)
    args, extra = parser.parse_known_args(["node", "instance", "--now", "--cfg", "x.cfg"])
    assert args._command is chosen and args.cfg == "x.cfg" and not extra
