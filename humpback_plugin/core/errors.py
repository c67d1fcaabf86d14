"""The project's exceptions: library code raises these, the CLI turns them into one line.

Every error a user can act on derives from :class:`HumpbackError`; the command line prints
``Error: <message>`` and exits 1 (2 for :class:`UsageError`, 3 for :class:`TrainingPending`).
Anything else escaping a command is a bug and keeps its traceback.
"""

from __future__ import annotations

import os


class HumpbackError(Exception):
    """Something the user can fix: bad input, a server that is down, a wrong option."""

    exit_code = 1


class UsageError(HumpbackError):
    """A wrong option, name or combination (exit code 2, as click's own usage errors)."""

    exit_code = 2


class UnknownComponent(UsageError):
    """A component name no plugin registered; the message lists what is available."""


class InputError(HumpbackError):
    """Bad input, with the file and the line (or byte offset / record) where it is."""

    def __init__(self, path: str | os.PathLike, where: str | int | None, message: str):
        self.path = str(path)
        self.where = where
        self.message = message
        loc = self.path if where is None else f"{self.path}:{where}"
        super().__init__(f"{loc}: {message}")

    def __reduce__(self) -> tuple:
        # Rebuilt from its three parts when it crosses from a worker process.
        return self.__class__, (self.path, self.where, self.message)


class ConfigError(HumpbackError):
    """A config Axolotl would reject or silently misread, naming the file and the key."""


class ClientError(HumpbackError):
    """A problem with the server or configuration that stops the whole job."""


class ServerUnavailable(ClientError):
    """No server answered within the retry budget; the stage stops and can resume later."""


class TemplateMismatch(ClientError):
    """The server renders chat requests differently from the model's training template."""


class StageInterrupted(HumpbackError):
    """The stage stopped early; everything finished so far is saved and a re-run resumes."""


class TrainingPending(HumpbackError):
    """The training command was printed; the run continues once its output exists."""

    exit_code = 3


class TrainingFailed(HumpbackError):
    """Axolotl exited with an error or left no model behind."""


class ServerError(HumpbackError):
    """Install, start or stop of the embedded vLLM server failed."""


class ToolMissing(HumpbackError):
    """An optional tool (lm-evaluation-harness, alpaca_eval) is not installed; the
    message says how to install it."""


class ToolFailed(HumpbackError):
    """An external tool exited with an error; the message has the tail of its log."""
