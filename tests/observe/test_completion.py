"""`slapos completion bash|zsh|fish`: generated from the parser, checked in the real shells."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO


def script(shell: str, tmp_path) -> str:
    result = subprocess.run([sys.executable, "-m", "slapos.cli.main", "completion", shell], capture_output=True,
                            text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    path = tmp_path / f"slapos.{shell}"
    path.write_text(result.stdout)
    return str(path)


def needs(shell: str):
    return pytest.mark.skipif(shutil.which(shell) is None, reason=f"{shell} not installed (apt-get install {shell})")


@needs("fish")
def test_fish_completes_commands_options_and_values(tmp_path):
    path = script("fish", tmp_path)
    assert subprocess.run(["fish", "--no-execute", path]).returncode == 0

    def complete(line: str) -> list[str]:
        result = subprocess.run(["fish", "--no-config", "-c", f"source {path}; complete -C{line!r}"],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        return [x.split("\t")[0] for x in result.stdout.splitlines()]

    assert complete("slapos node ins") == ["instance"]
    assert "metrics" in complete("slapos node ")
    assert complete("slapos completion ") == ["bash", "fish", "zsh"]
    assert complete("slapos request x y --state ") == ["destroyed", "started", "stopped"]
    assert complete("slapos --debug node status --for") == ["--format"]
    assert "--parameters_file" not in complete("slapos request --par")  # old spellings are not offered
    # the value of --cfg is skipped when finding the command ("node" is a file name there)
    assert complete("slapos request --cfg node --form") == ["--format"]


@needs("zsh")
def test_zsh_loads_the_completion(tmp_path):
    path = script("zsh", tmp_path)
    assert subprocess.run(["zsh", "-n", path]).returncode == 0
    result = subprocess.run(["zsh", "-f", "-c", f"source {path}; print -r -- $_comps[slapos]"],
                            capture_output=True, text=True, timeout=30, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert "_slapos" in result.stdout  # registered through bashcompinit


def test_every_shell_is_generated_and_old_name_kept(tmp_path):
    for shell in ("bash", "zsh", "fish"):
        assert "slapos" in open(script(shell, tmp_path)).read()
    old = subprocess.run([sys.executable, "-m", "slapos.cli.main", "complete"], capture_output=True, text=True,
                         timeout=60, cwd=REPO)
    assert old.returncode == 0 and "complete -o default -F _slapos slapos" in old.stdout
