"""Adapters: one reader per native annotation format, each yielding Loom's canonical records."""


class AnnotationError(ValueError):
    """A native annotation file that does not hold what its format promises.

    The message names the file, the row (e.g. ``annotations[17]``) and the
    field, so the user can open the file at the right place.
    """
