"""Training methods, one file each, registered by name in :data:`METHODS`.

Every module of this package is imported here, so a method registers itself by existing: adding
one is a new ``spatialspec/methods/<name>.py`` whose class is decorated with
``@METHODS.register("<name>")`` (plus its ``configs/<dataset>/<name>.yaml``), with no edit
elsewhere. Shared modules (``base``, ``dense``) register nothing; importing them is harmless.
"""

import importlib
import pkgutil

from spatialspec.methods.base import METHODS, SpatialMethod, get_method

for _module in pkgutil.iter_modules(__path__):  # sorted by name; registers each method
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METHODS", "SpatialMethod", "get_method"]
