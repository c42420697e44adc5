"""The parts of the pack that training builds on, imported once.

Inside ComfyUI the pack is a package, so `controlnet_core` is a sibling reached relatively; run
from the repository root (`python -m training.cli`, pytest) it is a top-level package.
"""

from __future__ import annotations

try:
    from ..controlnet_core import config, create, errors, files, formats, loader, model
except ImportError:  # `training` is the top-level package: the repo root is on sys.path
    from controlnet_core import config, create, errors, files, formats, loader, model  # type: ignore[no-redef]

__all__ = ["config", "create", "errors", "files", "formats", "loader", "model"]
