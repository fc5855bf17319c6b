"""Actions of slapformat as data (an `ip`/`useradd` argument list or a small file-system function)
and the executor that applies them, records what it did and, on failure, undoes it.
Split from slapos.format.system, which re-exports these names.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from slapos.base.errors import SlapOSError

log = logging.getLogger("slapos.format")


@dataclass
class Action:
    """One change: either external commands (argument lists) or a Python file-system function."""

    subject: str  # what it is about: "computer", "slappart3", ...
    description: str  # one human line: what will be done
    commands: list[list[str]] = field(default_factory=list)
    func: Callable[[], None] | None = None
    undo_commands: list[list[str]] = field(default_factory=list)
    undo_func: Callable[[], None] | None = None
    needs_root: bool = False

    @property
    def binaries(self) -> set[str]:
        return {argv[0] for argv in self.commands}

    def __str__(self) -> str:
        text = f"{self.subject}: {self.description}"
        if self.commands:
            text += " [" + "; ".join(" ".join(argv) for argv in self.commands) + "]"
        return text


class CommandFailed(SlapOSError):
    pass


class Executor:
    """Runs actions for real, or only records them (dry run). Commands never go through a shell."""

    def __init__(self, dry_run: bool = False, timeout: float = 60.0):
        self.dry_run = dry_run
        self.timeout = timeout
        self.done: list[Action] = []
        self.recorded: list[str] = []

    def run_command(self, argv: list[str], subject: str) -> None:
        import subprocess  # only runs that change something pay for it

        log.debug("%s: running %s", subject, " ".join(argv))
        try:
            result = subprocess.run(
                argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=self.timeout, check=False
            )
        except FileNotFoundError:
            raise CommandFailed(f"{subject}: the program {argv[0]!r} is not installed or not on PATH") from None
        except subprocess.TimeoutExpired:
            raise CommandFailed(f"{subject}: `{' '.join(argv)}` did not finish within {self.timeout:.0f} s") from None
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            reason = detail[-1] if detail else f"exit code {result.returncode}"
            raise CommandFailed(f"{subject}: `{' '.join(argv)}` failed: {reason}")

    def apply(self, action: Action) -> None:
        if self.dry_run:
            self.recorded.append(str(action))
            return
        log.info("%s: %s", action.subject, action.description)
        for argv in action.commands:
            self.run_command(argv, action.subject)
        if action.func is not None:
            try:
                action.func()
            except OSError as e:
                raise SlapOSError(f"{action.subject}: cannot {action.description}: {e.strerror or e}") from None
        self.done.append(action)

    def rollback(self) -> list[str]:
        """Undo what this run did, newest first; returns the problems met (best effort)."""
        problems = []
        while self.done:
            action = self.done.pop()
            try:
                for argv in action.undo_commands:
                    self.run_command(argv, action.subject)
                if action.undo_func is not None:
                    action.undo_func()
            except (SlapOSError, OSError) as e:
                problems.append(f"{action.subject}: could not undo '{action.description}': {e}")
        return problems
