"""Base class for op parameters: frozen, self-validating, serialisable into the fingerprint."""

from __future__ import annotations

import dataclasses
from typing import Any

from melanoma_data.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Params:
    """Frozen parameter set of one op; subclasses override :meth:`validate`."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` when a value is out of range."""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the parameters (JSON-able), used in configs and fingerprints."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "") -> Params:
        """Build from a dict, rejecting unknown keys with the list of known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"unknown parameter(s) {', '.join(unknown)}{' in ' + where if where else ''}; "
                f"known: {', '.join(sorted(known))}"
            )
        try:
            return cls(**values)
        except TypeError as exc:  # wrong types surface as TypeError from validate()
            raise ConfigError(f"{where or cls.__name__}: {exc}") from exc


def check(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``choices``."""
    check(value in choices, f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def check_int(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> None:
    """Raise :class:`ConfigError` unless ``value`` is an int within ``[lo, hi]``."""
    check(isinstance(value, int) and not isinstance(value, bool), f"{name} must be an integer, got {value!r}")
    check(lo is None or value >= lo, f"{name} must be >= {lo}, got {value}")
    check(hi is None or value <= hi, f"{name} must be <= {hi}, got {value}")


def check_float(name: str, value: Any, lo: float | None = None, hi: float | None = None) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a real number within ``[lo, hi]``."""
    check(
        isinstance(value, int | float) and not isinstance(value, bool),
        f"{name} must be a number, got {value!r}",
    )
    check(lo is None or value >= lo, f"{name} must be >= {lo}, got {value}")
    check(hi is None or value <= hi, f"{name} must be <= {hi}, got {value}")
