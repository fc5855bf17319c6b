"""Reading the reference captures (../shared/reference/captures/NNN-*.txt) for the tests."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit


def captures_dir() -> Path:
    """The captures next to the checkout (../shared/reference/captures), or $SLAPNODE_CAPTURES."""
    env = os.environ.get("SLAPNODE_CAPTURES")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    return repo.parent / "shared" / "reference" / "captures"


@dataclass
class Capture:
    name: str
    method: str
    endpoint: str
    headers: dict[str, str]
    query: dict[str, str]
    form: dict[str, str]
    status: int
    response: str


def read_capture(path: Path) -> Capture:
    text = path.read_text(encoding="utf-8")
    request, _, response = text.partition("### RESPONSE\n")
    request = request.split("### REQUEST (as received from the client)\n", 1)[1]
    head, _, rest = request.partition("\n\n")
    body = rest.split("\n\n###", 1)[0].strip("\n") if not rest.startswith("###") else ""
    lines = head.splitlines()
    method, target, _ = lines[0].split(" ", 2)
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    parts = urlsplit(target)
    form = {}
    if method == "POST" and body:
        form = {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}
    response_head, _, response_body = response.partition("\n\n")
    status = int(response_head.split(" ", 2)[1])
    return Capture(
        name=path.name,
        method=method,
        endpoint=parts.path.lstrip("/"),
        headers=headers,
        query={k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()},
        form=form,
        status=status,
        response=response_body.rstrip("\n"),
    )


def all_captures() -> list[Capture]:
    directory = captures_dir()
    return [read_capture(p) for p in sorted(directory.glob("[0-9][0-9][0-9]-*.txt"))]


def capture(number: int) -> Capture:
    (path,) = captures_dir().glob(f"{number:03d}-*.txt")
    return read_capture(path)
