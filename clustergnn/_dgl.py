"""The one place clustergnn imports DGL.

DGL 2.1.0 (the newest Linux wheel on PyPI) imports its ``graphbolt`` add-on eagerly, and ships that
add-on's C++ library only for torch 2.0-2.2.1; on our pinned torch 2.13 a plain ``import dgl`` fails
with ``FileNotFoundError: Cannot find DGL C++ graphbolt library``.  We use nothing from graphbolt, so
an empty module is registered under its name before DGL is imported.  ``DGLBACKEND`` is set so DGL does
not write ``~/.dgl/config.json`` on first import.  Every other module imports ``dgl`` from here.
"""

from __future__ import annotations

import os
import sys
import types

os.environ.setdefault("DGLBACKEND", "pytorch")
if "dgl" not in sys.modules:
    sys.modules.setdefault("dgl.graphbolt", types.ModuleType("dgl.graphbolt"))

import dgl  # noqa: E402  (must follow the workaround above)
import dgl.nn.pytorch as dglnn  # noqa: E402

__all__ = ["dgl", "dglnn"]
