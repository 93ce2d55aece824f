"""Hand-written record files (`python -m devtools produce --from-file`) and their lines.

Each line is a JSON event object, sent byte for byte as written (good or bad, so malformed
events can be tested), or a raw Kafka record `{"key": ..., "value_b64": ..., "partition": ...}`;
blank lines and `#` comments are skipped. `format_record_line` writes the line that
reproduces a record exactly (what `produce --dry-run` prints).
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from devtools.generator import record_key
from devtools.sender import SendableRecord

KIND_FILE_JSON = "file:json"
KIND_FILE_RAW = "file:raw"


@dataclass(frozen=True)
class FileRecord:
    """One record read from a `--from-file` file; `partition` None lets the key decide."""

    key: bytes | None
    value: bytes | None
    kind: str
    partition: int | None = None
    line_no: int = 0


class RecordFileError(ValueError):
    """A `--from-file` line is neither a JSON event nor a raw record."""


_RAW_FIELDS = {"key", "value_b64", "partition"}


def parse_record_line(line: bytes, line_no: int, *, where: str = "line") -> FileRecord | None:
    """One `--from-file` line -> a record; None for blank and `#` comment lines."""
    body = line[:-1] if line.endswith(b"\r") else line
    stripped = body.strip()
    if not stripped or stripped.startswith(b"#"):
        return None

    def fail(why: str) -> RecordFileError:
        return RecordFileError(
            f"{where} {line_no}: {why}; each line must be a JSON event object or "
            '{"key": <string|null>, "value_b64": <base64|null>, "partition": <int, optional>}'
        )

    try:
        parsed = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise fail(f"not UTF-8 ({exc.reason}); use value_b64 for raw bytes") from exc
    except json.JSONDecodeError as exc:
        raise fail(f"not JSON ({exc.msg} at column {exc.colno}); use value_b64 for raw bytes") from exc
    if not isinstance(parsed, dict):
        raise fail(f"a JSON {type(parsed).__name__}, not an object; use value_b64 for raw bytes")
    if "value_b64" in parsed and set(parsed) <= _RAW_FIELDS:
        return _raw_record(parsed, line_no, fail)
    # A JSON event: its own bytes go out untouched, good or bad, so malformed events can be tested.
    return FileRecord(record_key(parsed.get("account_id")), body, KIND_FILE_JSON, None, line_no)


def _raw_record(obj: dict, line_no: int, fail: Callable[[str], RecordFileError]) -> FileRecord:
    key, value_b64, partition = obj.get("key"), obj["value_b64"], obj.get("partition")
    if key is not None and not isinstance(key, str):
        raise fail(f'"key" must be a string or null, got {type(key).__name__}')
    if value_b64 is not None and not isinstance(value_b64, str):
        raise fail(f'"value_b64" must be a base64 string or null, got {type(value_b64).__name__}')
    if partition is not None and (isinstance(partition, bool) or not isinstance(partition, int) or partition < 0):
        raise fail(f'"partition" must be a non-negative integer, got {partition!r}')
    if key is None and value_b64 is None:
        raise fail("a Kafka record needs a key or a value; both are null")
    try:
        value = None if value_b64 is None else base64.b64decode(value_b64, validate=True)
    except ValueError as exc:
        raise fail(f'"value_b64" is not valid base64 ({exc})') from exc
    return FileRecord(record_key(key), value, KIND_FILE_RAW, partition, line_no)


def read_records_file(path: str | Path) -> Iterator[FileRecord]:
    """Records of a `--from-file` file, lazily; errors name the file and the line."""
    path = Path(path)
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise RecordFileError(f"cannot read {path}: {exc.strerror}") from exc
    with handle:
        for line_no, line in enumerate(handle, start=1):
            record = parse_record_line(line.rstrip(b"\n"), line_no, where=f"{path}: line")
            if record is not None:
                yield record


def format_record_line(record: SendableRecord) -> str:
    """The `--from-file` line that reproduces the record exactly (what `--dry-run` prints).

    The event JSON itself when it round-trips byte for byte, else the raw base64 form.
    """
    partition = getattr(record, "partition", None)
    value = record.value
    if value is not None and partition is None and b"\n" not in value and b"\r" not in value:
        try:
            parsed = parse_record_line(value, 0)
        except RecordFileError:
            parsed = None
        if parsed is not None and parsed.kind == KIND_FILE_JSON and parsed.key == record.key and parsed.value == value:
            return value.decode("utf-8")
    if record.key is not None:
        try:
            key: str | None = record.key.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError("record keys must be UTF-8 to be written as a record line") from exc
    else:
        key = None
    raw: dict = {"key": key, "value_b64": None if value is None else base64.b64encode(value).decode("ascii")}
    if partition is not None:
        raw["partition"] = partition
    return json.dumps(raw, ensure_ascii=False)
