"""User-facing errors.

A `UserError` is a mistake the user can fix (bad input, bad recipe, missing device).
The CLI prints its message on one line and exits non-zero, without a traceback.
Everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A one-line, actionable error caused by the user's input or machine."""

    exit_code = 2


class GateFailed(UserError):
    """A parity gate failed: the deployed model does not behave like the trained one."""

    exit_code = 3
