"""Errors meant for the user: the runner prints their message without a traceback."""


class UserError(Exception):
    """A problem the user can fix (bad path, bad config, missing weights).

    The message names the problem and the fix. ``trainer.run`` prints it and exits with status 2;
    ``--debug`` shows the traceback as well.
    """
