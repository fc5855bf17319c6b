"""`slapos console`: a script run non-interactively, and one interactive session in a pseudo-terminal."""
from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import time

from .conftest import one_line_error, slapos_argv, write_client_config

SR = "/srv/demo/software.cfg"
PRODUCTS = "software_product_list =\n  demo /srv/demo/software.cfg\n"

SCRIPT = """
import sys
print("argv", sys.argv[1:])
print("product", product.demo)
supply(product.demo)
partition = request(product.demo, "from-script", {"n": 3})
print("partition", partition.getId())
print("parameters", partition.getInstanceParameterDict()["n"])
print("master", master_url == slap.connection.master_url, computer_id)
sys.exit(3)
"""


def test_script_runs_with_the_console_names(client):
    write_client_config(client.config, client.proxy.url, client.proxy.computer_id, PRODUCTS)
    script = client.home / "script.py"
    script.write_text(SCRIPT)
    result = client.run("console", "--cfg", str(client.config), str(script), "one", "--two")
    assert result.returncode == 3, result.stderr  # the script's exit status
    assert result.stdout.splitlines() == [
        "argv ['one', '--two']",
        f"product {SR}",
        "partition slappart0",
        "parameters 3",
        "master True local_computer",
    ]
    # requests made from the console are recorded like `slapos request` ones
    listing = json.loads(client.run("list", "--format", "json").stdout)
    assert [(e["name"], e["partition_id"]) for e in listing] == [("from-script", "slappart0")]


def test_script_errors_are_one_line(client):
    script = client.home / "bad.py"
    script.write_text("product.nothing\n")
    result = client.run("console", "--cfg", str(client.config), str(script))
    assert result.returncode == 1
    assert "software product 'nothing' is unknown" in one_line_error(result)
    result = client.run("console", "--cfg", str(client.config), str(client.home / "missing.py"))
    assert result.returncode == 5
    assert "missing.py not found" in one_line_error(result)
    result = client.run("console", "--cfg", str(client.config), "--ipython")
    if result.returncode != 0:  # IPython is not a dependency; when absent, say so in one line
        assert "IPython is not installed" in one_line_error(result)


def _read_until(fd: int, marker: bytes, timeout: float = 30.0) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"timed out waiting for {marker!r}; got {data!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            data += chunk
    return data


def test_interactive_session_in_a_terminal(client):
    write_client_config(client.config, client.proxy.url, client.proxy.computer_id, PRODUCTS)
    primary, secondary = pty.openpty()
    env = {**client.env, "TERM": "dumb"}
    process = subprocess.Popen(
        slapos_argv("console", "--cfg", str(client.config), "-p"),
        stdin=secondary, stdout=secondary, stderr=secondary, env=env, cwd=str(client.home),
        start_new_session=True,
    )
    os.close(secondary)
    try:
        banner = _read_until(primary, b">>> ")
        assert b"slapos console, master " + client.proxy.url.encode() in banner
        # readline completion: "produ<TAB>" completes to "product"
        os.write(primary, b"produ\t.demo\r")
        out = _read_until(primary, b">>> ")
        assert SR.encode() in out
        os.write(primary, b"supply(product.demo)\r")
        assert b"Supplied" in _read_until(primary, b">>> ")
        os.write(primary, b"request(product.demo, 'typed').getId()\r")
        assert b"'slappart0'" in _read_until(primary, b">>> ")
        os.write(primary, b"\x04")  # Ctrl-D ends the session
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(primary)
    assert process.returncode == 0
    history = (client.home / ".slapos" / "console_history").read_text()
    assert "supply(product.demo)" in history and "request(product.demo, 'typed').getId()" in history
