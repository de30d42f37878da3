"""The one exception type for a user's mistake.

Anything the user can fix (a path, a key, a value, a file's content) raises `InputError` with a
one-line message that names the file, key or value and says what was expected. The CLI prints it
as a single line on stderr and exits with status 2; every other exception is a bug and keeps its
traceback.
"""


class InputError(Exception):
    """A user's input is wrong; the message is one line naming what and what was expected.

    quiet: another process (MPI rank 0) reports the same error, so this one exits without printing it.
    """

    def __init__(self, message: str, *, quiet: bool = False):
        super().__init__(" ".join(str(message).split()))
        self.quiet = quiet
