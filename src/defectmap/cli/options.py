"""Validated command-line options: every numeric flag is checked where it is parsed.

A value out of range is a usage error (one line, exit 2) raised while the command line is
parsed, before the command runs, so no output is touched. Each helper returns a
``typer.Option`` whose help text states the accepted range.
"""

from __future__ import annotations

from typing import Any

import typer

from defectmap.constants import (
    DEFAULT_TILE_OVERLAP,
    MAX_INPUT_SIZE,
    MAX_TILE_OVERLAP,
    MAX_TILE_SIZE,
    MIN_INPUT_SIZE,
)

__all__ = ["count_option", "image_size_option", "port_option", "ratio_option", "seed_option",
           "seeds_option", "tile_option", "tile_overlap_option", "tile_scale_option"]


def _bounds(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if high is None:
        return f"{'>' if low_open else '>='} {low:g}"
    if low is None:
        return f"{'<' if high_open else '<='} {high:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def _checker(
    low: float | None, high: float | None, low_open: bool = False, high_open: bool = False
) -> Any:
    text = _bounds(low, high, low_open, high_open)

    def check(value: float | None) -> float | None:
        if value is None:
            return value
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high or value != value:  # value != value: NaN
            raise typer.BadParameter(f"must be {text}, got {value:g}")
        return value

    return check


def _help(text: str, bounds: str) -> str:
    return f"{text.rstrip('.')}, {bounds}."


def count_option(default: int | None, *names: str, help: str, minimum: int = 1,
                 maximum: int | None = None) -> Any:
    """An integer count flag, ``>= minimum`` (and ``<= maximum``)."""
    check = _checker(minimum, maximum)
    return typer.Option(default, *names, callback=check,
                        help=_help(help, _bounds(minimum, maximum, False, False)))


def seed_option(default: int = 0, help: str = "random_state of the split and the fit.") -> Any:
    """The ``--seed`` flag: an integer >= 0 (NumPy's generators take no negative seed)."""
    return typer.Option(default, "--seed", callback=_checker(0, None), help=_help(help, ">= 0"))


def seeds_option(help: str) -> Any:
    """A repeatable ``--seed`` flag: integers >= 0 (None when not given)."""
    check = _checker(0, None)

    def check_all(values: list[int] | None) -> list[int] | None:
        for value in values or []:
            check(value)
        return list(values) if values else None

    return typer.Option(None, "--seed", callback=check_all, help=_help(help, ">= 0"))


def ratio_option(default: float | None, *names: str, help: str, low: float = 0.0,
                 high: float | None = 1.0,
                 low_open: bool = True, high_open: bool = True) -> Any:
    """A float flag within an interval, open or closed at each end (default ``(0, 1)``)."""
    text = _bounds(low, high, low_open, high_open)
    return typer.Option(default, *names, callback=_checker(low, high, low_open, high_open),
                        help=_help(help, text))


def image_size_option() -> Any:
    """``--image-size``: the side of the square network input, a sane number of pixels."""
    return typer.Option(
        None, "--image-size", callback=_checker(MIN_INPUT_SIZE, MAX_INPUT_SIZE),
        help=f"Side of the square network input, pixels ({MIN_INPUT_SIZE} to "
        f"{MAX_INPUT_SIZE}; default: the detector's).",
    )


def tile_option() -> Any:
    """``--tile``: tiling mode's tile side in native pixels (None: no tiling)."""
    return typer.Option(
        None, "--tile", metavar="SIZE", callback=_checker(MIN_INPUT_SIZE, MAX_TILE_SIZE),
        help=f"Tiling mode for large images: fit and score overlapping SIZE x SIZE tiles "
        f"(native pixels), maps stitched at native size ({MIN_INPUT_SIZE} to {MAX_TILE_SIZE}; "
        "default: no tiling, whole images resized).",
    )


def tile_overlap_option() -> Any:
    """``--tile-overlap``: smallest overlap of neighbouring tiles (None: the default)."""
    return ratio_option(
        None, "--tile-overlap", low=0.0, high=MAX_TILE_OVERLAP, low_open=False,
        high_open=False,
        help=f"Smallest overlap of neighbouring tiles, a fraction of SIZE (default "
        f"{DEFAULT_TILE_OVERLAP:g}; needs --tile)")


def tile_scale_option() -> Any:
    """``--tile-scale``: network pixels per native pixel of a tile (None: 1)."""
    return ratio_option(
        None, "--tile-scale", low=0.0, high=4.0, high_open=False,
        help="Network pixels per native pixel of a tile: each tile is resized to "
        "SIZE x scale (default 1; needs --tile; excludes --image-size)")


def port_option(default: int = 8000) -> Any:
    """``--port``: a TCP port, 1 to 65535."""
    return typer.Option(default, "--port", callback=_checker(1, 65535),
                        help="TCP port (1 to 65535).")
