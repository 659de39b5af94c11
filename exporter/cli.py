"""The ``--version`` text of the ``celery-exporter`` command. The rest of the command line (the flags,
``--help``) is generated from the option declarations by ``exporter.options.build_parser``, which
``exporter.config.load_config`` reads; ``__main__`` answers ``--version`` before any of that.
"""

from __future__ import annotations

import platform
from importlib import metadata

from exporter import __version__
from exporter.options import PROG


def version_text() -> str:
    """What ``celery_exporter_build_info`` carries, plus kombu (the transport layer under Celery)."""
    lines = [f"{PROG} {__version__}", f"  python: {platform.python_version()}"]
    for dist in ("celery", "kombu"):
        try:
            lines.append(f"  {dist}: {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            lines.append(f"  {dist}: not installed")
    return "\n".join(lines)
