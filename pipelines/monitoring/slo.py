"""SLO config (pipelines/conf/slo.yaml): its structure is conf/schemas/config/slo.schema.json,
checked on load; errors name the file and entry."""
from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

from pipelines.core.config import CONF_DIR, check_document, parse_duration, read_yaml

DEFAULT_SLO = CONF_DIR / "slo.yaml"


@dataclass(frozen=True)
class StreamSlo:
    max_freshness: timedelta = timedelta(seconds=60)
    lag_growth_window: timedelta = timedelta(minutes=5)
    max_quarantine_share: float = 0.01


@dataclass(frozen=True)
class Slos:
    default: StreamSlo
    streams: dict[str, StreamSlo]

    def for_stream(self, name: str) -> StreamSlo:
        return self.streams.get(name, self.default)


def _apply(base: StreamSlo, raw: dict | None, at: str) -> StreamSlo:
    """`base` with the SLOs `raw` (a checked `defaults` or `streams.<name>`) gives."""
    return replace(base, **{key: float(value) if key == "max_quarantine_share" else parse_duration(value, f"{at}.{key}")
                            for key, value in (raw or {}).items()})


def parse_slos(doc: object, where: str = "slo config") -> Slos:
    check_document(doc, "slo", where)
    default = _apply(StreamSlo(), doc.get("defaults"), f"{where}: defaults")
    streams = doc.get("streams") or {}
    return Slos(default, {name: _apply(default, raw, f"{where}: streams.{name}") for name, raw in streams.items()})


def load_slos(path: Path | str | None = None) -> Slos:
    path = Path(path or DEFAULT_SLO)
    return parse_slos(read_yaml(path), str(path))
