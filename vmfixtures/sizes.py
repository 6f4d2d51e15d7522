"""Human sizes ("512M", "2G") to bytes, with errors that name the field."""

from __future__ import annotations

import re

from .errors import ConfigError

_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(value: object, where: str) -> int:
    """Parse ``value`` as a byte size; ``where`` names the field for the error."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: {value!r} is not a size (use e.g. 512M or 2G)")
    if isinstance(value, int):
        if value <= 0:
            raise ConfigError(f"{where}: {value} must be positive")
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(value), re.IGNORECASE)
    if not m:
        raise ConfigError(f"{where}: {value!r} is not a size (use e.g. 512M or 2G)")
    n = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if n <= 0:
        raise ConfigError(f"{where}: {value!r} must be positive")
    return n


def format_size(n: int) -> str:
    for unit in ("T", "G", "M", "K"):
        if n % _UNITS[unit] == 0 and n >= _UNITS[unit]:
            return f"{n // _UNITS[unit]}{unit}"
    return str(n)
