"""The hub: trains, quantises and signs models, pushes them to devices over MQTT, and
stores what devices report. docs/architecture.md maps its packages.

The public surface is what callers (the CLI, tests, benchmarks) need::

    from hub import Hub, HubConfig, create_app
    with Hub(HubConfig(data_dir=...)) as hub:
        app = create_app(hub)

Names are imported lazily, so ``import hub.store.tables`` does not start FastAPI.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hub.api.main import create_app
    from hub.app import Hub, make_ingest, pipeline_config, serve_devices
    from hub.settings import HubConfig

__all__ = ["Hub", "HubConfig", "create_app", "make_ingest", "pipeline_config", "serve_devices"]

_HOMES = {
    "Hub": "hub.app",
    "HubConfig": "hub.settings",
    "make_ingest": "hub.app",
    "pipeline_config": "hub.app",
    "serve_devices": "hub.app",
    "create_app": "hub.api.main",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'hub' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
