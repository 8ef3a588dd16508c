"""The one exception type that reaches the user as a single line instead of a traceback."""


class UserError(Exception):
    """A problem the user can fix: the message names the problem and the fix, on one line."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM stopped training after saving its state: the run can be resumed."""
