"""The one exception type for bad user input: entry points print its message and exit with status 2."""


class UserError(ValueError):
    """A problem with the user's input (a file, a config key, a value) whose message names the fix."""
