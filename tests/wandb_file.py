"""Reads what an offline W&B run recorded (its ``run-*.wandb`` file), for tests: wandb's own reader
left the Python package when its core moved to Go. The file is the W&B header then a LevelDB-style
log (32 KiB blocks of chunks: crc32c, length, kind) of protobuf ``Record`` messages."""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK, HEADER, CHUNK_HEADER = 32768, 7, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):  # noqa: ANN201
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending = HEADER, b""
    while pos + CHUNK_HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < CHUNK_HEADER:  # the block's tail is padding
            pos += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + CHUNK_HEADER])
        chunk = data[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def run_summary(path: Path) -> dict:
    """The run's name, group, tags and config (every update merged; values decoded from JSON)."""
    run: dict = {"config": {}}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.update(name=record.run.display_name, group=record.run.run_group, tags=list(record.run.tags))
            updates = record.run.config.update
        elif kind == "config":
            updates = record.config.update
        else:
            continue
        for item in updates:
            key = ".".join(item.nested_key) if item.nested_key else item.key
            run["config"][key] = json.loads(item.value_json)
    return run
