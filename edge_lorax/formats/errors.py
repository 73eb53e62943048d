"""The package's one error type for expected bad input, and its few refinements.

`InputError` (a ValueError) means: the user's input or options are wrong; the message is one line naming the file
or option and the fix. The CLI turns exactly these into `Error: ...` with exit 1; anything else is a bug and shows
its traceback. Subclasses only say which kind of input (adapter, subspace, user, bundle, data) or carry the
OSError meaning a caller may test for (an output that exists, an input that does not).
"""


class InputError(ValueError):
    """Bad input: the message is one line naming the file or option and the fix."""


class OutputExistsError(InputError, FileExistsError):
    """The output path exists and --overwrite was not given."""


class MissingInputError(InputError, FileNotFoundError):
    """An input file or folder is absent or is not what the command needs."""
