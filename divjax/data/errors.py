"""The one exception every data loader raises: a path, what is wrong with it, and what was expected."""


class DataError(ValueError):
    """A data file or folder is missing, corrupted, or not the one the loader expects.

    Subclasses ``ValueError`` so that callers validating user input can catch both alike.
    """
