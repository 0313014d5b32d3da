"""Errors the user can fix: the CLI turns each into one line on stderr and exit status 2."""


class BenchError(Exception):
    """A problem with the user's input or environment, reported as one clear line."""


class SpecError(BenchError):
    """A model does not fit its input, or a spec value is invalid."""


class DatasetError(BenchError):
    """A dataset is unknown, missing, or fails its checksum or format check."""


class BackendUnavailable(BenchError):
    """A backend's framework is not installed or cannot be imported."""


class SavedModelError(BenchError):
    """A saved model is missing, corrupt, fails its checksum, or does not match its spec or input."""
