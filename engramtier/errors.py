"""One error type for every bad input a user can hand us.

The command line catches `EngramTierError` and prints its message as a single line, so the message
must say what is wrong, where (a file, a key, an argument) and what to do about it.
"""


class EngramTierError(Exception):
    """Bad input or a refused operation; `str(err)` is the one line shown to the user."""
