"""Compressions, one module each, found by name. Adding one: a new module here and a yaml in conf/compression/."""
import importlib
import pkgutil

from vcon.compression.base import (
    REGISTRY,
    Compression,
    Footprint,
    ModuleCompression,
    Packed,
    WeightCompression,
    from_config,
    register,
    to_config,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["REGISTRY", "Compression", "Footprint", "ModuleCompression", "Packed", "WeightCompression", "from_config",
           "register", "to_config"]
