"""Exception types: every message names the offending value, the file it came from and the fix."""


class ClipsimError(Exception):
    """Base class for errors a user can act on (bad input, missing artifact, missing model)."""


class WorkspaceError(ClipsimError):
    """The workspace folder, its registry or an artifact inside it is missing or inconsistent."""


class DataError(ClipsimError):
    """An input file (image, table, shard, embedding) is missing, unreadable or malformed."""


class ModelError(ClipsimError):
    """A model config or its weights cannot be resolved offline."""


class ReadOnlyError(ClipsimError):
    """A write was attempted on a workspace served read-only (presentation mode)."""


class ArgumentError(ClipsimError):
    """A function, command or job argument has the wrong type or is out of range (nothing was changed)."""
