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
