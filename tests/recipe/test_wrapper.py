"""slapnode:wrapper: argument lists without any shell, environment, mode."""
from __future__ import annotations

import json
import stat
import subprocess
import sys

from .conftest import run_buildout, write_profile

HOSTILE = "$(touch {tmp}/pwned); rm -rf {tmp}/victim `touch {tmp}/pwned2` * 'q\" \\n"


def show_script(tmp_path):
    """A program printing its arguments and one environment variable as JSON."""
    script = tmp_path / "show.py"
    script.write_text("import json, os, sys\nprint(json.dumps([sys.argv[1:], os.environ.get('GREETING')]))\n")
    return script


def test_instance_parameter_stays_one_literal_argument(request_instance, tmp_path):
    """A hostile instance parameter, read by slapnode:config, reaches the program unchanged."""
    (tmp_path / "victim").mkdir()
    hostile = HOSTILE.format(tmp=tmp_path)
    instance = request_instance(parameters={"message": hostile})
    show = show_script(tmp_path)
    directory = tmp_path / "partition"
    write_profile(directory, f"""
        [buildout]
        parts = service
        [slap-configuration]
        recipe = slapnode:config
        [service]
        recipe = slapnode:wrapper
        wrapper-path = ${{buildout:directory}}/etc/service/show
        command-line = {sys.executable} {show} "two words" plain
        arguments =
            --message
            ${{slap-configuration:configuration.message}}
        environment =
            GREETING=hello   world = yes
        """, connection=instance.connection)
    run_buildout(directory)

    wrapper = directory / "etc" / "service" / "show"
    assert stat.S_IMODE(wrapper.stat().st_mode) == 0o750
    output = subprocess.run([str(wrapper), "extra"], capture_output=True, text=True, check=True).stdout
    assert json.loads(output) == [["two words", "plain", "--message", hostile, "extra"], "hello   world = yes"]
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()
    assert (tmp_path / "victim").is_dir()
    # the value is embedded as a Python literal, and no shell is involved at all
    assert "/bin/sh" not in wrapper.read_text() and "shell" not in wrapper.read_text()


def test_wrapper_runs_program_from_path_and_errors_are_clear(tmp_path):
    write_profile(tmp_path / "ok", """
        [buildout]
        parts = echo
        [echo]
        recipe = slapnode:wrapper
        wrapper-path = bin/echo-it
        command-line = echo 'a  b'
        """)
    run_buildout(tmp_path / "ok")
    result = subprocess.run([str(tmp_path / "ok" / "bin" / "echo-it")], capture_output=True, text=True)
    assert result.stdout == "a  b\n"

    write_profile(tmp_path / "quotes", """
        [buildout]
        parts = w
        [w]
        recipe = slapnode:wrapper
        wrapper-path = w
        command-line = echo "unbalanced
        """)
    result = run_buildout(tmp_path / "quotes", check=False)
    assert result.returncode != 0 and "[w] command-line: No closing quotation" in result.stdout

    write_profile(tmp_path / "env", """
        [buildout]
        parts = w
        [w]
        recipe = slapnode:wrapper
        wrapper-path = w
        command-line = true
        environment = 1BAD=x
        """)
    result = run_buildout(tmp_path / "env", check=False)
    assert result.returncode != 0 and "[w] environment line '1BAD=x': expected NAME=value" in result.stdout
