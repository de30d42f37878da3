"""The one exception type for a user's mistake, and the exit statuses.

Anything the user can fix (a path, a key, a value, a file's content) raises `InputError` with a
one-line message that names the file, key or value and says what was expected. The CLI prints it
as a single line on stderr and exits with status 2; so does a failing file system (`describe_os_error`:
a full disk, a lost mount). Every other exception is a bug and keeps its traceback (status 1).
A run stopped by a signal (SIGTERM, SIGUSR1, Ctrl-C) or by a stalled rank exits with status 3, its
finished work saved for ``--continue``. A closed stdout (``lorefine check … | head -1``) ends the program quietly
with status 141, as SIGPIPE ends a shell tool.
"""

EXIT_BUG = 1
EXIT_INPUT_ERROR = 2
EXIT_STOPPED = 3
EXIT_CLOSED_PIPE = 128 + 13  # 128 + SIGPIPE, what a shell reports for a tool its reader left


class InputError(Exception):
    """A user's input is wrong; the message is one line naming what and what was expected.

    quiet: another process (MPI rank 0) reports the same error, so this one exits without printing it.
    collective: every rank raises it at the same point (rank 0's verdict, broadcast), so the ranks can end
    normally together; any other InputError on one rank of many ends the job (`parallel.mpi`).
    """

    def __init__(self, message: str, *, quiet: bool = False, collective: bool = False):
        super().__init__(" ".join(str(message).split()))
        self.quiet = quiet
        self.collective = collective


def describe_os_error(error: OSError) -> str:
    """One line for a failing file operation: the file and the system's reason."""
    reason = error.strerror or (str(error).splitlines()[0] if str(error) else error.__class__.__name__)
    where = f"{error.filename}: " if getattr(error, "filename", None) else ""
    return " ".join(f"{where}{reason}".split())
