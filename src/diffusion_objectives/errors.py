"""Exceptions raised for bad user input (the CLI maps them to exit code 2)."""

__all__ = ["OptionError"]


class OptionError(ValueError):
    """An option, name or value given by the user is not allowed; the message names it and the choices."""
