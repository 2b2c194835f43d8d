"""The agent's config file (TOML), checked field by field; docs/agent.md lists every setting.

::

    device_id = "press-17"
    device_class = "rpi4"
    broker = "mqtt://hub.example:1883"
    state_dir = "/var/lib/edgefleet"
    # optional
    runtime = "onnxruntime"
    window_s = 10.0
    heartbeat_s = 300.0             # idle windows coalesce into one zero window this often
    endpoint = "127.0.0.1:8780"     # "" disables the local endpoint
    spool_max_bytes = 16777216      # telemetry/drift kept on disk while offline (agent/spool.py)
    spool_fsync = false             # true: fsync each window (survives a power cut, costs ms)
    spool_replay_per_s = 5.0        # spooled windows sent per second after an outage's burst
    memory_budget_mb = 64           # all loaded models together (agent/core/budget.py)
    upload_disk_bytes = 33554432    # capture uploads kept until the hub has them (docs/capture.md)
    renew_fraction = 0.6667         # renew the certificate at this fraction of its lifetime
    renew_spread = 0.1              # ± half this fraction, per device (agent/renewal.py)
    renew_retry_s = 60.0            # first wait for the hub's answer; doubles up to an hour
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from agent.core.config import CoreConfig
from agent.spool import DEFAULT_MAX_BYTES, REPLAY_PER_S
from shared import protocol
from shared.pkcs11 import Pkcs11Error, TokenKeyUri
from shared.renewal import DEFAULT_FRACTION, DEFAULT_SPREAD, renew_at

__all__ = ["DEFAULT_ENDPOINT", "AgentConfig", "ConfigError", "endpoint_address"]

DEFAULT_ENDPOINT = "127.0.0.1:8780"  # the local inference endpoint: host:port on loopback
DEFAULT_UPLOAD_DISK_BYTES = CoreConfig.upload_disk_bytes  # bytes


class ConfigError(ValueError):
    """An agent config that cannot be used; the message names the field."""


@dataclass(frozen=True)
class AgentConfig:
    device_id: str
    device_class: str
    broker: str
    state_dir: Path
    runtime: str = "onnxruntime"
    window_s: float = 10.0
    heartbeat_s: float = 300.0  # idle windows coalesce (agent/core/windows.py)
    endpoint: str = DEFAULT_ENDPOINT
    spool_max_bytes: int = DEFAULT_MAX_BYTES  # bytes
    spool_fsync: bool = False
    spool_replay_per_s: float = REPLAY_PER_S  # the hub's ingest budget is 20/s (agent/spool.py)
    memory_budget_mb: float | None = None  # MiB for all loaded models; None: unchecked
    key: str = ""  # "": the key file; "pkcs11:...": a key in a token (agent/token_key.py)
    upload_disk_bytes: int = DEFAULT_UPLOAD_DISK_BYTES  # bytes of capture uploads kept
    renew_fraction: float = DEFAULT_FRACTION  # of the certificate's lifetime (ADR 0035)
    renew_spread: float = DEFAULT_SPREAD  # of the lifetime: the fleet's renewals spread
    renew_retry_s: float = 60.0  # seconds; the first wait for an answer, then doubling

    @classmethod
    def load(cls, path: Path) -> AgentConfig:
        """Read and check a TOML config.

        Raises:
            ConfigError: unreadable file, missing or invalid field.
        """
        try:
            raw = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"{path}: {e}") from e
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> AgentConfig:
        required = ("device_id", "device_class", "broker", "state_dir")
        missing = [k for k in required if not isinstance(raw.get(k), str) or not raw.get(k)]
        if missing:
            raise ConfigError(f"{source}: missing or empty: {', '.join(missing)}")
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"{source}: unknown settings: {', '.join(sorted(unknown))}")
        if not protocol.is_device_id(raw["device_id"]):
            raise ConfigError(f"{source}: device_id {raw['device_id']!r}: letters, digits, _.-")
        u = urlparse(raw["broker"])
        if u.scheme not in ("mqtt", "tcp", "mqtts") or not u.hostname:
            raise ConfigError(
                f"{source}: broker must be mqtt://host:port or mqtts://host:port,"
                f" got {raw['broker']!r}"
            )
        runtime = raw.get("runtime", "onnxruntime")
        if runtime not in ("onnxruntime", "tflite"):  # agent/backends.py RUNTIMES
            raise ConfigError(
                f"{source}: runtime must be onnxruntime or tflite (LiteRT), got {runtime!r}"
            )
        window = raw.get("window_s", 10.0)
        if not isinstance(window, (int, float)) or window <= 0:
            raise ConfigError(f"{source}: window_s must be a positive number")
        heartbeat = raw.get("heartbeat_s", 300.0)
        if not isinstance(heartbeat, (int, float)) or isinstance(heartbeat, bool) or heartbeat < 0:
            raise ConfigError(f"{source}: heartbeat_s must be a number >= 0 (0: every window)")
        endpoint = raw.get("endpoint", DEFAULT_ENDPOINT)
        if not isinstance(endpoint, str) or (endpoint and endpoint_address(endpoint) is None):
            raise ConfigError(
                f'{source}: endpoint must be "host:port" (e.g. "{DEFAULT_ENDPOINT}")'
                f' or "" to turn it off, got {endpoint!r}'
            )
        spool_max = raw.get("spool_max_bytes", DEFAULT_MAX_BYTES)
        if not isinstance(spool_max, int) or isinstance(spool_max, bool) or spool_max < 4096:
            raise ConfigError(f"{source}: spool_max_bytes must be an integer >= 4096")
        if not isinstance(raw.get("spool_fsync", False), bool):
            raise ConfigError(f"{source}: spool_fsync must be true or false")
        replay = raw.get("spool_replay_per_s", REPLAY_PER_S)
        if not isinstance(replay, (int, float)) or isinstance(replay, bool) or replay <= 0:
            raise ConfigError(f"{source}: spool_replay_per_s must be a positive number")
        budget = raw.get("memory_budget_mb")
        if budget is not None and (
            not isinstance(budget, (int, float)) or isinstance(budget, bool) or budget <= 0
        ):
            raise ConfigError(f"{source}: memory_budget_mb must be a positive number (MiB)")
        key = raw.get("key", "")
        if not isinstance(key, str) or (key and not key.startswith("pkcs11:")):
            raise ConfigError(f'{source}: key must be "" (the key file) or a "pkcs11:" URI')
        if key:
            try:
                TokenKeyUri.parse(key)
            except Pkcs11Error as e:
                raise ConfigError(f"{source}: key: {e}") from e
        uploads = raw.get("upload_disk_bytes", DEFAULT_UPLOAD_DISK_BYTES)
        if not isinstance(uploads, int) or isinstance(uploads, bool) or uploads < 0:
            raise ConfigError(f"{source}: upload_disk_bytes must be an integer >= 0")
        renewal = _renewal(raw, source)
        return cls(
            device_id=raw["device_id"],
            device_class=raw["device_class"],
            broker=raw["broker"],
            state_dir=Path(raw["state_dir"]),
            runtime=str(runtime),
            window_s=float(window),
            heartbeat_s=float(heartbeat),
            endpoint=endpoint,
            spool_max_bytes=spool_max,
            spool_fsync=bool(raw.get("spool_fsync", False)),
            spool_replay_per_s=float(replay),
            memory_budget_mb=None if budget is None else float(budget),
            key=key,
            upload_disk_bytes=uploads,
            renew_fraction=renewal[0],
            renew_spread=renewal[1],
            renew_retry_s=renewal[2],
        )


def _renewal(raw: dict[str, Any], source: str) -> tuple[float, float, float]:
    """The renewal settings: fraction, spread, retry (checked as shared/renewal.py would)."""
    values = [raw.get(k, d) for k, d in (("renew_fraction", DEFAULT_FRACTION),
              ("renew_spread", DEFAULT_SPREAD), ("renew_retry_s", 60.0))]  # fmt: skip
    if any(not isinstance(v, (int, float)) or isinstance(v, bool) for v in values):
        raise ConfigError(f"{source}: renew_fraction, renew_spread, renew_retry_s are numbers")
    fraction, spread, retry = (float(v) for v in values)
    try:
        renew_at(0.0, 1.0, "x", 0, fraction=fraction, spread=spread)
    except ValueError as e:
        raise ConfigError(f"{source}: renew_fraction/renew_spread: {e}") from e
    if retry <= 0:
        raise ConfigError(f"{source}: renew_retry_s must be a positive number of seconds")
    return fraction, spread, retry


def endpoint_address(endpoint: str) -> tuple[str, int] | None:
    """``(host, port)`` of an ``endpoint`` setting ``"host:port"`` (host may be empty:
    loopback), or None when it is not one."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        return None
    return host or "127.0.0.1", int(port)
