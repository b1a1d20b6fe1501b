"""Exceptions whose message is the whole story for the user (printed without a traceback)."""


class UserFacingError(Exception):
    """Raised for conditions the user can fix: a missing server, a bad setting, a bad input."""


class RefusedInput(UserFacingError, ValueError):
    """A stage refuses its inputs (not validated, changed, damaged): nothing was done."""
