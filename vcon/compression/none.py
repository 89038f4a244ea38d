"""No compression: the dense fine-tuning baseline. Nothing is wrapped; the VCON schedule does not apply."""
from __future__ import annotations

import dataclasses

from vcon.compression.base import Compression, register


@register
@dataclasses.dataclass
class NoCompression(Compression):
    name = "none"
    dense = True

    def describe(self) -> str:
        return "dense"
