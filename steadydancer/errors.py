"""One error type for bad user input, shown to the user as a single line."""


class InputError(ValueError):
    """Bad input from the user (a file, a flag, a folder, an API argument).

    The message must name the file, flag or argument and what was expected; the command line
    prints it as one line (``error: ...``) without a traceback. A ValueError, so that
    ``except ValueError`` around an API call catches it.
    """


class Terminated(BaseException):
    """The process was asked to stop (SIGTERM, as ``timeout`` and job schedulers send).

    A BaseException like KeyboardInterrupt, so that the same cleanup runs (partial outputs
    removed); the command line exits with 143 (128 + SIGTERM).
    """
