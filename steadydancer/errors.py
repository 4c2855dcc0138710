"""One error type for bad user input, shown to the user as a single line."""


class InputError(Exception):
    """Bad input from the user (a file, a flag, a folder).

    The message must name the file or flag and what was expected; the command line
    prints it as one line (``error: ...``) without a traceback.
    """
