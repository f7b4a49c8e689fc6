"""Checks of loose user input at the API's edges: numbers of any type, never a bool."""

from __future__ import annotations

import numbers
import os
import reprlib

from .errors import ConfigError


def is_integer(value) -> bool:
    """An integer of any type (Python's or numpy's), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value) -> bool:
    """A real number of any type (NaN and inf included), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def ensure_path(value, name: str, expected: str) -> str:
    """`value` as a str, once it is a path (a str or an os.PathLike).

    Raises:
        ConfigError: it is not; the message names it as `name` and asks for `expected`.
    """
    if not isinstance(value, (str, os.PathLike)):
        raise ConfigError(f"{name}={reprlib.repr(value)} must be {expected}")
    return os.fspath(value)


def ensure_integer(value, name: str, minimum: int = 1) -> int:
    """`value` as an int.

    Raises:
        ConfigError: not an integer >= minimum; the message names it as `name`.
    """
    if not is_integer(value) or value < minimum:
        raise ConfigError(f"{name}={value!r} must be an integer >= {minimum}")
    return int(value)


def ensure_instance(value, types, name: str, expected: str):
    """`value` unchanged, once it is an instance of `types`.

    Raises:
        ConfigError: it is not; the message names it as `name`, what it is, and asks for `expected`.
    """
    if not isinstance(value, types):
        shown = f"{name}={reprlib.repr(value)} ({type(value).__name__})"
        raise ConfigError(f"{shown} is of the wrong type; pass {expected}")
    return value


def ensure_clock(clock, name: str):
    """`clock` unchanged, once it can be called for the time now.

    Raises:
        ConfigError: it cannot; the message names it as `name`.
    """
    if not callable(clock):
        raise ConfigError(
            f"{name}={reprlib.repr(clock)} ({type(clock).__name__}) must be a function that returns the time now "
            "in seconds, such as time.time"
        )
    return clock
