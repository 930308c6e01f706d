"""The ``melanoma`` command line (typer): :mod:`melanoma_cli.app` holds the commands."""

from __future__ import annotations

__all__ = ["app", "main"]


def main() -> None:
    """Run the command line (what the ``melanoma`` console script calls)."""
    from melanoma_cli.app import main as run

    run()


def __getattr__(name: str):
    if name == "app":  # the typer app, imported on first use (the commands import the libraries lazily)
        from melanoma_cli.app import app

        return app
    raise AttributeError(name)
