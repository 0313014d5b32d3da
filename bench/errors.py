"""Errors the user can fix: the CLI turns each into one line on stderr and exit status 2."""

import difflib


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


def did_you_mean(name: object, valid) -> str:
    """The suffix `` (did you mean 'adam'?)`` when ``name`` is a small edit away from a valid name, else ''.

    A typo is the most common bad input; naming the likely intent saves reading the whole list.
    """
    close = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown(kind: str, name: object, valid) -> str:
    """The one message for a name that is not in a fixed vocabulary: what, the suggestion, the valid names."""
    return f"unknown {kind} {name!r}{did_you_mean(name, valid)}; valid: {', '.join(str(v) for v in valid)}"
