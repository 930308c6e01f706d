"""Preprocessing configuration: defaults < TOML file < CLI flags, validated once, passed down."""

from __future__ import annotations

import dataclasses
import tomllib
import warnings
from pathlib import Path
from typing import Any

import pydantic

from melanoma_data.errors import ConfigError
from melanoma_data.folds import ShardParams
from melanoma_data.ops import steps
from melanoma_data.ops.base import Int, Real, problems

#: Config section → parameter class: every configured step's section (from the step table), the op policy by view
#: (``[views]``: which steps do not run on clinical photos, also from the step table), then ``[shards]``.
_SECTIONS: dict[str, type] = {**steps.sections(), "views": steps.ViewPolicy, "shards": ShardParams}

#: Config sections named before they took their op's name (TOML files, format-1 manifests) → today's name.
RENAMED_SECTIONS = steps.renamed_sections()
#: Keys added after fingerprints were first taken: left out of the fingerprint while at their default,
#: so a version preprocessed with unchanged settings keeps its fingerprint (and is reused, not redone).
_ADDED_KEYS = {name: cls.added_params for name, cls in _SECTIONS.items() if getattr(cls, "added_params", ())}
#: Sections added after fingerprints were first taken: left out of the fingerprint while all at defaults.
_ADDED_SECTIONS = (*steps.added_sections(), "views")


class DeprecatedSection(FutureWarning):
    """A config file uses a section's old name (still read; shown by default, unlike DeprecationWarning)."""


def current_sections(values: dict[str, Any], *, where: str = "config", warn: bool = True) -> dict[str, Any]:
    """``values`` with old section names (``vignette``, ``portrait``, ``resize``) renamed to today's.

    Args:
        values: a nested config dict (a TOML file's ``[preprocess]`` table, a manifest's ``config``).
        where: what to name in messages.
        warn: emit :class:`DeprecatedSection` for each old name (off when reading an old manifest,
            which the user did not write).

    Raises:
        ConfigError: a section is given under both its old and its new name.
    """
    out = dict(values)
    for old, new in RENAMED_SECTIONS.items():
        if old not in out:
            continue
        if new in out:
            raise ConfigError(f"{where}: [{old}] and [{new}] are the same section (old and new name); keep [{new}]")
        if warn:
            warnings.warn(f"{where}: section [{old}] is now called [{new}]; the old name is still read but "
                          f"will be removed", DeprecatedSection, stacklevel=2)
        out[new] = out.pop(old)
    return out


def manifest_section(config: dict[str, Any], name: str) -> dict[str, Any]:
    """One section of a dataset version's ``manifest["config"]``, whichever name its format used."""
    return dict(current_sections(config, where="manifest", warn=False).get(name) or {})


#: the fixed default partition size fingerprints were first taken with (the derived default hashes as this)
LEGACY_PARTITION_SIZE = 128
#: a derived partitioning aims at this many partitions (a moving progress bar, busy workers) ...
AUTO_PARTITIONS = 32
#: ... of at least this many images (per-task overhead) and at most the legacy size (memory per task)
AUTO_MIN_PARTITION = 8


def auto_partition_size(n_inputs: int) -> int:
    """Images per partition derived from the input count alone: 89 inputs → 12 partitions of 8, 10,000 → 128."""
    return max(AUTO_MIN_PARTITION, min(LEGACY_PARTITION_SIZE, -(-max(n_inputs, 1) // AUTO_PARTITIONS)))


class _Scalars(pydantic.BaseModel):
    """The config's own values (besides the sections), validated as the op parameters are."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    partition_size: Int | None = pydantic.Field(None, ge=1, le=100_000, description="images per processing "
                                                "partition (default: derived from the number of inputs)")
    oversample: Real = pydantic.Field(1.0, ge=0.25, le=8.0, description="decode at least oversample × size pixels "
                                      "on the resize side before the working-resolution ops")


class _Config:
    """Everything that determines the bytes a preprocessing run writes (and so its fingerprint).

    A frozen dataclass with one attribute per config section, each the parameters of the step of that name (the
    step table, :mod:`melanoma_data.ops.steps`: ``decode``, ``field_of_view``, ``landscape``, ``square``,
    ``artefacts``, ``hair``, ``colour``, ``encode``, ``phash``), plus ``views`` (the op policy by view: the steps
    not run on clinical photos; left out of the fingerprint at its default) and ``shards`` (files, folds,
    near-duplicates and TFRecords), and:

    Attributes:
        partition_size: images per processing partition (one Dask task each); None (the default) derives it
            from the number of inputs (:func:`auto_partition_size`; never from the workers, so the same inputs
            give the same version on any cluster). Outputs do not depend on it; the fingerprint takes the
            default as the 128 it was before it was derived, and an explicit value as itself.
        oversample: decode at least ``oversample × size`` pixels on the resize side before the
            working-resolution ops (1.0 = just enough for the output size).
    """

    def __post_init__(self) -> None:
        try:
            _Scalars(partition_size=self.partition_size, oversample=self.oversample)
        except pydantic.ValidationError as exc:
            raise ConfigError("; ".join(problems(exc, _Scalars))) from None
        if self.artefacts.policy == "crop" and self.field_of_view.policy != "crop":
            raise ConfigError("[artefacts] policy = 'crop' needs [field_of_view] policy = 'crop' (the kept part is "
                              f"one box), got {self.field_of_view.policy!r}; use policy = 'mask' instead")

    @property
    def working_side(self) -> int:
        """Pixels the decoded image must keep on the side the resize policy uses."""
        return max(1, round(self.square.size * self.oversample))

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON/TOML-able), the form stored in the manifest."""
        out: dict[str, Any] = {name: getattr(self, name).to_dict() for name in _SECTIONS}
        if self.partition_size is not None:  # derived from the input count otherwise
            out["partition_size"] = self.partition_size
        out["oversample"] = self.oversample
        return out

    def partitioning(self, n_inputs: int) -> int:
        """Images per partition for ``n_inputs`` inputs: the explicit ``partition_size``, or derived."""
        return self.partition_size if self.partition_size is not None else auto_partition_size(n_inputs)

    def fingerprint_dict(self) -> dict[str, Any]:
        """The canonical form the dataset fingerprint hashes: the section names fingerprints were first
        taken with, and keys added since left out while at their defaults (unchanged settings, unchanged
        fingerprint)."""
        out = self.to_dict()
        out.setdefault("partition_size", LEGACY_PARTITION_SIZE)  # the derived default: as fingerprints took it
        for section, keys in _ADDED_KEYS.items():
            default = _SECTIONS[section]().to_dict()
            for key in keys:
                if out[section].get(key) == default[key]:
                    del out[section][key]
        for section in _ADDED_SECTIONS:
            if out[section] == _SECTIONS[section]().to_dict():
                del out[section]
        old_name = {new: old for old, new in RENAMED_SECTIONS.items()}
        return {old_name.get(k, k): v for k, v in out.items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, warn: bool = True) -> PreprocessConfig:
        """Build from a nested dict as found in a TOML file or a manifest; unknown keys are errors.

        Old section names are read as today's (with a :class:`DeprecatedSection` warning when ``warn``).
        """
        values = current_sections(values, warn=warn)
        known = set(_SECTIONS) | {"partition_size", "oversample"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        kwargs: dict[str, Any] = {}
        for name, params_cls in _SECTIONS.items():
            section = values.get(name, {})
            if not isinstance(section, dict):
                raise ConfigError(f"[{name}] must be a table, got {section!r}")
            kwargs[name] = params_cls.from_dict(section, where=f"[{name}]")
        for key in ("partition_size", "oversample"):
            if key in values:
                kwargs[key] = values[key]
        return cls(**kwargs)

    def with_overrides(self, **flat: Any) -> PreprocessConfig:
        """Apply CLI-style overrides given as ``section__key=value`` (``None`` values are skipped)."""
        values = self.to_dict()
        for key, value in flat.items():
            if value is None:
                continue
            if "__" in key:
                section, sub = key.split("__", 1)
                values.setdefault(RENAMED_SECTIONS.get(section, section), {})[sub] = value
            else:
                values[key] = value
        return PreprocessConfig.from_dict(values)


#: The config: the sections of the step table (and ``shards``), then ``partition_size`` and ``oversample``.
PreprocessConfig = dataclasses.make_dataclass(
    "PreprocessConfig",
    [*((name, cls, dataclasses.field(default_factory=cls)) for name, cls in _SECTIONS.items()),
     ("partition_size", "int | None", dataclasses.field(default=None)),
     ("oversample", "float", dataclasses.field(default=1.0))],
    bases=(_Config,), frozen=True, namespace={"__doc__": _Config.__doc__})
PreprocessConfig.__module__ = __name__


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file as a dict.

    Raises:
        ConfigError: the file does not exist or is not valid TOML.
    """
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None


#: Named settings applied over the defaults (a config file and flags still override them).
#: ``tiles`` is for small crops such as the ISIC 2024 tiles (61–239 px, median ~131): one fixed output
#: size near their median; hair is measured but not inpainted, and colour statistics are measured
#: but the colour is not corrected (2024 write-ups found neither helped on tiles, and both cost more
#: than the tile's decode); no artefact detection (tiles are crops of total-body photographs: no
#: dermoscope, so no rulers, gel or field, and the detectors would cost more than the decode);
#: large partitions, since the per-task overhead dominates small images; and
#: near-duplicates within 7% of the hash bits (17 of 256) instead of 22%: tiles all look alike (a
#: lesion centred on skin). Measured on generated tiles: at 22% distinct tiles chain hundreds of
#: images of many patients into one group; among 401,059 distinct tiles 6 come within 16 bits of
#: another, 51 within 18 and 4,521 within 25, while copies re-encoded at q70 stay within 14 bits,
#: half-size copies within 12 and 2x copies within 6 (60 tiles each; a 2-px crop moves 24–46 bits:
#: crops of tiles are not found at any threshold that keeps distinct tiles apart).
PRESETS: dict[str, dict[str, Any]] = {
    "tiles": {
        "square": {"size": 128},
        "hair": {"remove": False},
        "colour": {"enabled": False},
        "artefacts": {"enabled": False},
        "shards": {"duplicate_distance": 0.07},
        "partition_size": 1024,
    },
}


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def load_config(path: str | Path | None = None, preset: str | None = None, **overrides: Any) -> PreprocessConfig:
    """Defaults, then the preset, then the TOML file (its ``[preprocess]`` table or the top level), then overrides.

    Raises:
        ConfigError: unreadable file, unknown keys, an unknown preset or invalid values.
    """
    values: dict[str, Any] = {}
    if preset is not None and preset != "none":
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}, none")
        values = _merge(values, PRESETS[preset])
    if path is not None:
        data = read_toml(path)
        values = _merge(values, current_sections(data.get("preprocess", data), where=str(path)))
    return PreprocessConfig.from_dict(values).with_overrides(**overrides)
