"""Reading a W&B run that was logged offline (``<run dir>/wandb/offline-run-*/run-<id>.wandb``) back into Python,
with W&B's own protobuf classes. ``wandb.Api`` needs a server, and wandb 0.31 has no offline reader of its own.

The file: a 7-byte header (``:W&B``, magic 0xBEE1, version 0), then 32 KiB blocks of LevelDB-log style chunks, each
``<crc32 u32, length u16, type u8>`` + data; type 1 is a whole record, 2/3/4 its first/middle/last pieces."""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any, Iterator

BLOCK, HEADER, CHUNK = 32 * 1024, 7, 7


def records(path: Path) -> Iterator[Any]:
    from wandb.proto import wandb_internal_pb2

    raw = Path(path).read_bytes()
    if struct.unpack("<4sHB", raw[:HEADER]) != (b":W&B", 0xBEE1, 0):
        raise ValueError(f"{path} is not a W&B run file")
    pos, pieces = HEADER, b""
    while pos + CHUNK <= len(raw):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < CHUNK:  # a block ends in zero padding
            pos += left_in_block
            continue
        crc, length, kind = struct.unpack("<IHB", raw[pos:pos + CHUNK])
        if kind == 0 and length == 0:
            break
        data = raw[pos + CHUNK:pos + CHUNK + length]
        pos += CHUNK + length
        if zlib.crc32(data, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            raise ValueError(f"{path}: corrupt chunk at byte {pos}")
        pieces = data if kind in (1, 2) else pieces + data
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            yield record


def read_run(run_folder: Path) -> dict[str, Any]:
    """``{"config": {...}, "history": [{metric: value, "_step": n}, ...], "summary": {...}}`` of one offline run
    folder (``.../wandb/offline-run-<time>-<id>``)."""
    (path,) = Path(run_folder).glob("run-*.wandb")
    out: dict[str, Any] = {"config": {}, "history": [], "summary": {}}

    def items(entries: Any) -> dict[str, Any]:
        return {e.key or "/".join(e.nested_key): json.loads(e.value_json) for e in entries}

    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            out["history"].append(items(record.history.item))
        elif kind == "summary":
            out["summary"].update(items(record.summary.update))
        elif kind == "config":
            out["config"].update(items(record.config.update))
        elif kind == "run":
            out["config"].update(items(record.run.config.update))
    return out


def runs(run_dir: Path) -> list[Path]:
    """The offline W&B runs of one vcon run folder, oldest first (a resumed run adds one)."""
    return sorted((Path(run_dir) / "wandb").glob("offline-run-*"))
