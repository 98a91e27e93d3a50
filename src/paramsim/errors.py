"""One exception type for problems a user can fix; the CLI prints its message on one line."""


class ParamsimError(Exception):
    """A problem with the user's input, named together with the way to fix it."""
