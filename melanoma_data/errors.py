"""The toolkit's exceptions: one root for both halves; the CLI turns every one of them into one line.

This module sits on the lowest floor (it imports nothing of the project), so the data half, the model half and
the plugins all raise from the same root and the command line catches that root alone.
"""

from __future__ import annotations


class MelanomaError(Exception):
    """Root of every error the toolkit raises on purpose (data, models and plugins)."""


#: the root's name from when only the data half had one (third-party code catches it)
MelanomaDataError = MelanomaError


class DataInputError(MelanomaError, ValueError):
    """A user error found while training or predicting: a parameter, a column or the data cannot be used as
    asked (``fold 2: the training rows need both classes``). Also a ``ValueError``, which plugins raised before."""


class ConfigError(MelanomaDataError):
    """A configuration value or file is invalid."""


class InputError(MelanomaDataError):
    """The input folder or metadata cannot be used at all (fatal for the run)."""


class OutputError(MelanomaDataError):
    """The output location cannot be written."""


class CorruptShard(InputError):
    """A file of a dataset version does not match its manifest entry (truncated, changed, swapped).

    Args:
        path: the file, as the manifest names it (relative to the version).
        detail: what differs.
    """

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"{path}: {detail} (run `validate` on the version; preprocess again to rebuild it)")
        self.path = path
        self.detail = detail


class ValidationFailed(MelanomaDataError):
    """A dataset version does not pass validation; ``problems`` lists every finding."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems or [])


class ImageRejected(MelanomaDataError):
    """One image cannot be used; carries a stable reason code for the quarantine table.

    Args:
        reason: short machine-readable code (``truncated``, ``too_large``, ...).
        detail: human-readable explanation.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class PipelineStepError(MelanomaDataError):
    """A pipeline step failed for one image; names the step and the image (MONAI-style context)."""

    def __init__(self, step: str, image_name: str, cause: BaseException) -> None:
        reason = cause.reason if isinstance(cause, ImageRejected) else "op_error"
        detail = cause.detail if isinstance(cause, ImageRejected) else f"{type(cause).__name__}: {cause}"
        super().__init__(f"step {step!r} failed on image {image_name!r}: {detail}")
        self.step = step
        self.image_name = image_name
        self.reason = reason
        self.detail = detail


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says what was kept and how to resume (still a KeyboardInterrupt)."""
