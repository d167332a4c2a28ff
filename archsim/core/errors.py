"""The one exception type that reaches the user as a single line and exit status 2."""


class ArchsimError(Exception):
    """Bad input or an impossible request: the CLI prints ``archsim: error: <msg>``, exits 2."""


class ConfigError(ArchsimError):
    """An architecture config or override is malformed or names a key that does not exist."""


class ModelError(ArchsimError):
    """A model spec is unknown or inconsistent."""


class ScenarioError(ArchsimError):
    """A scenario (phase, batch, lengths, precision, chips) is invalid."""


class CapacityError(ArchsimError):
    """The model does not fit on the chips asked for."""


class UnsupportedOpError(ArchsimError):
    """The architecture family cannot run an op of the graph."""


class ScheduleError(ArchsimError):
    """A static schedule violates a resource or data dependency (a compiler bug)."""


def did_you_mean(word: str, options) -> str:
    """`` (did you mean 'x'?)`` for the closest option to a misspelt ``word``, else ``""``."""
    import difflib

    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
