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
