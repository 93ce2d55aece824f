"""SLO config (pipelines/conf/slo.yaml), validated on load: errors name the file and entry."""
from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

from pipelines.core.config import CONF_DIR, ConfigError, parse_duration, read_yaml

DEFAULT_SLO = CONF_DIR / "slo.yaml"
_KEYS = {"max_freshness", "lag_growth_window", "max_quarantine_share"}


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


def _apply(base: StreamSlo, raw: object, at: str) -> StreamSlo:
    if raw is None:
        return base
    if not isinstance(raw, dict):
        raise ConfigError(f"{at}: expected a mapping")
    if unknown := set(raw) - _KEYS:
        raise ConfigError(f"{at}: unknown keys {sorted(unknown)} (allowed: {sorted(_KEYS)})")
    values = {}
    for key in ("max_freshness", "lag_growth_window"):
        if key in raw:
            values[key] = parse_duration(raw[key], f"{at}.{key}")
    if "max_quarantine_share" in raw:
        share = raw["max_quarantine_share"]
        if type(share) not in (int, float) or not 0 <= share <= 1:
            raise ConfigError(f"{at}.max_quarantine_share: expected a number between 0 and 1, got {share!r}")
        values["max_quarantine_share"] = float(share)
    return replace(base, **values)


def parse_slos(doc: dict, where: str = "slo config") -> Slos:
    if unknown := set(doc) - {"version", "defaults", "streams"}:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    default = _apply(StreamSlo(), doc.get("defaults"), f"{where}: defaults")
    streams_raw = doc.get("streams") or {}
    if not isinstance(streams_raw, dict):
        raise ConfigError(f"{where}: 'streams' must be a mapping of stream name to overrides")
    return Slos(default, {name: _apply(default, raw, f"{where}: streams.{name}") for name, raw in streams_raw.items()})


def load_slos(path: Path | str | None = None) -> Slos:
    path = Path(path or DEFAULT_SLO)
    return parse_slos(read_yaml(path), str(path))
