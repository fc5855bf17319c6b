"""The Prometheus text exposition format (version 0.0.4), written by hand.

Why not `prometheus-client`: what we expose is a few gauges and counters rebuilt from data we
already hold (the proxy database, the node's state files) plus one request histogram; the format
is three line kinds. The library would add ~25 ms of imports to the node's periodic run and, for
the proxy's worker processes, a multi-process mode that needs its own directory of mmap files.

    families = [Family("slapos_partitions", "gauge", "Partitions by state")]
    families[0].add(3, state="busy")
    text = render(families)
"""
from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def escape_label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def labels_text(labels: dict[str, object]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{escape_label(v)}"' for k, v in labels.items()) + "}"


@dataclass
class Family:
    """One metric family: a name, a type (gauge, counter, histogram) and its samples."""

    name: str
    kind: str
    help: str
    samples: list[tuple[str, dict[str, object], float]] = field(default_factory=list)

    def add(self, value: float, suffix: str = "", **labels: object) -> None:
        self.samples.append((suffix, labels, value))

    def render(self) -> str:
        lines = [f"# HELP {self.name} {self.help.replace(chr(10), ' ')}", f"# TYPE {self.name} {self.kind}"]
        for suffix, labels, value in self.samples:
            lines.append(f"{self.name}{suffix}{labels_text(labels)} {number(value)}")
        return "\n".join(lines) + "\n"


def render(families: list[Family]) -> str:
    return "".join(f.render() for f in families)


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Write `path` whole or not at all (a textfile collector never reads half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
