"""The two kinds of failure a command reports, with the contract's exit statuses."""


class PipelineError(Exception):
    """A failure of the run (exit 1); the message says what to fix."""

    exit_code = 1


class UsageError(PipelineError):
    """Bad usage or settings (exit 2)."""

    exit_code = 2
