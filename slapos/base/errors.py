"""The user-facing error hierarchy and the exit codes of the `slapos` command.

Every error a person can fix (bad configuration, unreachable master, broken software release)
is a `SlapOSError`: the CLI prints its message as one line and exits with its `exit_code`.
"""

# Exit codes, as the reference documents them (scripts and crontabs depend on them).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_PROMISE_FAILED = 2
EXIT_OFFLINE = 3
EXIT_USAGE = 5
EXIT_LOCKED = 10


class SlapOSError(Exception):
    """An error with a message meant for a person: what is wrong and what to do."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(SlapOSError):
    """The configuration file is missing, unreadable or lacks a key."""


class UsageError(SlapOSError):
    """A command-line argument is wrong."""

    exit_code = EXIT_USAGE


class LockedError(SlapOSError):
    """Another run of the same kind holds the lock."""

    exit_code = EXIT_LOCKED


class PrivilegeError(SlapOSError):
    """The command needs root, or refuses to run something as root."""

    exit_code = EXIT_USAGE
