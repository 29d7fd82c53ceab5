"""Who may connect: the service answers other hosts only behind a bearer token.

:func:`check_exposure` is the one rule, applied before anything is opened or loaded: a
loopback address may serve without a token, any other address (``0.0.0.0``, a LAN address, a
host name) needs one.
"""

from __future__ import annotations

import ipaddress

from defectmap.errors import DefectmapError

__all__ = ["ExposureError", "check_exposure", "check_token", "is_loopback"]


class ExposureError(DefectmapError):
    """A blank token (``blank_token`` True), or a non-loopback address without a token."""

    def __init__(self, message: str, blank_token: bool) -> None:
        super().__init__(message)
        self.blank_token = blank_token


def is_loopback(host: str) -> bool:
    """Whether binding to ``host`` only accepts connections from this machine.

    Examples
    --------
    >>> is_loopback("127.0.0.1"), is_loopback("::1"), is_loopback("0.0.0.0")
    (True, True, False)
    """
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def check_token(token: str | None) -> None:
    """Refuse a token that is empty or only white space (it would guard nothing).

    Raises
    ------
    ExposureError
        ``token`` is set but blank.
    """
    if token is not None and not token.strip():
        raise ExposureError("the token is empty or only white space; give a real token",
                            blank_token=True)


def check_exposure(host: str, token: str | None) -> None:
    """Refuse to serve ``host`` without a token unless it is a loopback address.

    Raises
    ------
    ExposureError
        ``token`` is blank, or ``host`` is not loopback and there is no token.
    """
    check_token(token)
    if not is_loopback(host) and not token:
        raise ExposureError(f"host {host} is not a loopback address: serving it needs a token",
                            blank_token=False)
