"""The ``--ray`` address, and one Ray session per command.

``local`` starts a private Ray on this machine (Ray's token authentication on, stopped at
the end); ``auto`` joins the cluster this machine belongs to (``ray start`` ran here; its
token is found by Ray); ``HOST:PORT`` joins the cluster whose head is there (with token
authentication, Ray's default, set ``RAY_AUTH_MODE=token`` and give its token:
``RAY_AUTH_TOKEN`` or ``~/.ray/auth_token``; Ray never sends a local token to an explicit
address by itself); ``ray://HOST:PORT`` connects through Ray Client (needs ``ray[client]``).
When the program already called ``ray.init`` (a notebook, a test), that session is used as
it is and left running.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from defectmap.constants import EXTRA_OF_MODULE
from defectmap.errors import DefectmapError

__all__ = ["RayUnavailableError", "check_fits_a_node", "check_shared_path", "cluster_cpus",
           "parse_address", "ray_session", "require_ray"]

_ADDRESS = re.compile(r"^(ray://)?[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")
_QUIET = ("ray", "ray.data", "ray._private", "ray.air")
GIB = 1024 ** 3


class RayUnavailableError(DefectmapError):
    """Ray is not installed, or the cluster cannot be reached."""


def require_ray() -> ModuleType:
    """The ``ray`` module, or one clear line on how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise RayUnavailableError(
            f"--ray needs Ray, which is not installed: pip install "
            f"'defectmap[{EXTRA_OF_MODULE['ray']}]'") from None
    return ray


def parse_address(text: str) -> str:
    """Check a ``--ray`` value: ``auto``, ``local``, ``HOST:PORT`` or ``ray://HOST:PORT``.

    Raises
    ------
    DefectmapError
        Anything else (a dataset path typed after a bare ``--ray``, say).

    Examples
    --------
    >>> parse_address("10.0.0.5:6379")
    '10.0.0.5:6379'
    """
    value = text.strip()
    if value in ("auto", "local") or _ADDRESS.match(value):
        return value
    raise DefectmapError(f"--ray {text!r}: expected auto, local, HOST:PORT or ray://HOST:PORT "
                         "(write --ray=auto right before a path)")


def check_shared_path(path: str | Path, what: str) -> None:
    """Refuse object-store URLs: workers read every input from the same file-system path."""
    if "://" in str(path):
        raise DefectmapError(f"{path}: {what} must be a file-system path that every Ray "
                             "worker reaches (object-store URLs are not supported; mount it)")


@contextmanager
def ray_session(address: str) -> Iterator[ModuleType]:
    """Connect to (or start) Ray for the block; yield the ``ray`` module.

    Ray's own log lines and Ray Data's progress bars are silenced: the command line shows
    its own progress.
    """
    ray = require_ray()
    with warnings.catch_warnings():  # Ray's own constructor sets its deprecated fields
        warnings.simplefilter("ignore")
        context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.CRITICAL)  # errors come back as exceptions
    if ray.is_initialized():
        yield ray
        return
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                               "logging_level": logging.ERROR}
    try:
        ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = ""
        if "token" in f"{exc} {exc.__cause__}".lower():
            hint = ("; a cluster with token authentication (Ray's default) needs "
                    "RAY_AUTH_MODE=token and its token in RAY_AUTH_TOKEN or ~/.ray/auth_token")
        raise RayUnavailableError(f"--ray {address}: cannot start or reach Ray ({first})"
                                  f"{hint}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def cluster_cpus(ray: ModuleType) -> int:
    """CPUs of the cluster (all nodes), at least 1."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def check_fits_a_node(ray: ModuleType, num_cpus: int, what: str) -> None:
    """Refuse a CPU request that no node can meet: Ray would queue it forever.

    Raises
    ------
    DefectmapError
        Every alive node has fewer than ``num_cpus`` CPUs.
    """
    largest = max((int(node.get("Resources", {}).get("CPU", 0)) for node in ray.nodes()
                   if node.get("Alive")), default=0)
    if num_cpus > largest:
        raise DefectmapError(f"{what} asks for {num_cpus} CPUs (--threads) but the largest "
                             f"Ray node has {largest}; give --threads {max(1, largest)} or less")
