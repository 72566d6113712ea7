"""Errors that reach users, in a module light enough for every command to import."""


class ControlError(RuntimeError):
    """The control socket could not be bound, or no daemon answered."""


class CheckpointError(ValueError):
    """A checkpoint id that does not exist, or a manifest that cannot be read."""


class RestoreError(RuntimeError):
    """The restore cannot be done safely; nothing was changed."""


class SearchIndexError(RuntimeError):
    """No search index, or a query it cannot run."""
