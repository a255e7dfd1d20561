"""One exception root for crystalforge, split into setup errors and run errors.

Setup errors are raised before any work starts (bad configuration, a missing extra, a request
that cannot be compiled); run errors during a run. Messages name the offending value with
``!r`` and, where there is a finite set, the valid choices.
"""

from __future__ import annotations


class CrystalForgeError(Exception):
    """Root of every error crystalforge raises on purpose."""


class SetupError(CrystalForgeError):
    """Raised before a run starts: configuration, installation or input problems."""


class ConfigError(SetupError):
    """A setting or argument has a value outside what is accepted."""


class MissingExtraError(SetupError, ImportError):
    """An optional backend is used but its extra is not installed."""

    def __init__(self, what: str, extra: str) -> None:
        super().__init__(
            f"{what} requires the {extra!r} extra. Install it with: "
            f"pip install 'crystalforge[{extra}]'"
        )
        self.extra = extra


class UnknownPluginError(SetupError, KeyError):
    """A generator or validator name that is not registered."""

    def __str__(self) -> str:
        # KeyError quotes its argument; show the message as written.
        return str(self.args[0]) if self.args else ""


class DataError(SetupError):
    """Reference data is missing, unreadable or inconsistent."""


class RequestError(SetupError):
    """A design request that cannot be compiled into a DesignSpec."""


class ClarificationNeeded(RequestError):
    """The request is ambiguous or contradictory; the question is in the message.

    ``question`` is what to ask the user (the chat shows it; scripted runs exit 2 with it).
    When a safe default exists, ``assumption`` says it in words and ``drop`` is the phrase of
    the request that the default removes (``--assume-defaults`` re-compiles without it).
    """

    def __init__(
        self, question: str, *, assumption: str | None = None, drop: str | None = None
    ) -> None:
        super().__init__(question)
        self.question = question
        self.assumption = assumption
        self.drop = drop


class ReviewError(RequestError):
    """A review answer that cannot be applied (unknown candidate or action, nothing pending)."""


class RunError(CrystalForgeError):
    """Raised during a run."""


class GenerationFailed(RunError):
    """A generator could not produce any structure for a request; the reason is in the message."""


class ValidationFailed(RunError):
    """A validator could not run at all (not a per-structure failure, which is a Verdict)."""


class RunNotFound(RunError):
    """``crystalforge resume`` was given a directory that is not a run."""
