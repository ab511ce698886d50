"""The one exception type for user-facing problems.

Bad configs, missing or corrupt data, wrong checkpoints and dead peers must reach the user as one line
(`ffpipe: error: ...`, exit code 2), never as a traceback. Everything that is the user's to fix raises
`FFPipeError`; anything else is a bug and keeps its traceback.
"""


class FFPipeError(Exception):
    """A problem the user can fix; the CLI prints it as one line and exits with code 2."""
