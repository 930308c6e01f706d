"""Base classes for op parameters: frozen, validated by pydantic ``Field`` bounds, serialisable into the fingerprint.

:class:`OpParams` is the ops' base (the same idiom as the plugins' ``PluginParams``); :data:`Real` is the number type
of their float fields: an int stays an int (``p = 6`` and ``p = 6.0`` fingerprint differently, as they always have),
nothing is coerced from strings or booleans. :class:`Params` and the ``check_*`` helpers are the older dataclass
idiom, kept for the non-op ``[shards]`` section.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import pydantic
import pydantic.fields

from melanoma_data.errors import ConfigError

#: A real number as the configs give it: an int or a float, kept as given (never a bool or a string).
Real = pydantic.StrictInt | pydantic.StrictFloat
Int = pydantic.StrictInt
Bool = pydantic.StrictBool

_BOUNDS = {"greater_than_equal": (">=", "ge"), "less_than_equal": ("<=", "le"), "greater_than": (">", "gt"),
           "less_than": ("<", "lt")}


def problems(exc: pydantic.ValidationError, model: type[pydantic.BaseModel]) -> list[str]:
    """One readable line per problem of ``exc``, naming each field by its ``title`` (e.g. ``resize policy``)."""
    out: list[str] = []
    seen: set[tuple[Any, ...]] = set()
    for err in exc.errors():
        loc = err["loc"]
        field = model.model_fields.get(str(loc[0])) if loc else None
        name = (field.title if field is not None and field.title else str(loc[0])) if loc else "value"
        index = "".join(f"[{p}]" for p in loc[1:] if isinstance(p, int))
        name, kind, value, ctx = name + index, err["type"], err.get("input"), err.get("ctx") or {}
        if (name, kind) in seen or (kind == "float_type" and (name, "int_type") in seen):
            continue
        seen.add((name, kind))
        if kind in _BOUNDS:
            op, key = _BOUNDS[kind]
            out.append(f"{name} must be {op} {ctx[key]}, got {value!r}")
        elif kind == "literal_error":
            out.append(f"{name} must be one of {ctx['expected'].replace(' or ', ', ')}, got {value!r}")
        elif kind == "int_type":
            what = "a number" if "float" in str(getattr(field, "annotation", "")) else "an integer"
            out.append(f"{name} must be {what}, got {value!r}")
        elif kind == "float_type":
            out.append(f"{name} must be a number, got {value!r}")
        elif kind == "bool_type":
            out.append(f"{name} must be true or false, got {value!r}")
        elif kind == "tuple_type":  # (a TOML array, a JSON list)
            out.append(f"{name} must be a list, got {value!r}")
        elif kind == "extra_forbidden":
            out.append(f"unknown parameter {name}")
        else:
            out.append(f"{name}={value!r}: {err['msg']}")
    return out


class OpParams(pydantic.BaseModel):
    """Base of every op's parameters: frozen and hashable, unknown keys refused, values validated and never coerced.

    Subclasses declare fields with ``pydantic.Field`` bounds and descriptions (``title`` names the field in error
    messages when its name alone would be unclear). Construction with invalid values raises :class:`ConfigError`;
    positional arguments fill the fields in order (``OrientParams(6)``).
    """

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True, validate_default=False, strict=False)

    #: Parameters added after fingerprints were first taken: left out of the fingerprint while at their default,
    #: so a version preprocessed with unchanged settings keeps its fingerprint (and is reused, not redone).
    added_params: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *args: Any, **values: Any) -> None:
        if args:
            names = list(type(self).model_fields)
            if len(args) > len(names):
                raise ConfigError(f"{type(self).__name__} takes at most {len(names)} values, got {len(args)}")
            values.update(zip(names, args, strict=False))
        try:
            super().__init__(**values)
        except pydantic.ValidationError as exc:
            raise ConfigError("; ".join(problems(exc, type(self)))) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}: parameters are frozen "
                                              "(use model_copy(update=...))")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the parameters (values as given: tuples stay tuples, ints in float fields stay ints)."""
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "") -> OpParams:
        """Build from a dict, rejecting unknown keys with the list of known ones."""
        known = set(cls.model_fields)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"unknown parameter(s) {', '.join(unknown)}{' in ' + where if where else ''}; "
                f"known: {', '.join(sorted(known))}"
            )
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}" if where else str(exc)) from None

    @classmethod
    def describe(cls) -> list[dict[str, Any]]:
        """Each parameter: ``name``, ``type``, ``default``, ``bounds`` (e.g. ``>= 1, <= 64``) and ``description``."""
        out = []
        for name, f in cls.model_fields.items():
            inner = [m for arg in getattr(f.annotation, "__args__", ()) for m in getattr(arg, "__metadata__", ())]
            inner = [b for m in inner for b in (m.metadata if isinstance(m, pydantic.fields.FieldInfo) else [m])]
            bounds = [f"{op} {getattr(m, key)}" for m in (*f.metadata, *inner) for op, key in _BOUNDS.values()
                      if getattr(m, key, None) is not None]
            out.append({"name": name, "type": _type_name(f.annotation), "default": f.get_default(),
                        "bounds": ", ".join(dict.fromkeys(bounds)), "description": f.description or ""})
        return out


def _type_name(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "")
    if annotation in (int, pydantic.StrictInt):
        return "int"
    if annotation in (bool, pydantic.StrictBool):
        return "bool"
    if "tuple[str" in text:
        return "list of names"
    if "tuple" in text:
        return "list of numbers"
    if "Annotated[int" in text and "Annotated[float" in text:
        return "number"
    if "Literal" in text:
        return "one of " + ", ".join(repr(a) for a in getattr(annotation, "__args__", ()))
    return text


def check(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` holds (an op's function arguments; its
    parameters are checked by their pydantic fields)."""
    if not condition:
        raise ConfigError(message)


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``choices``."""
    check(value in choices, f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
