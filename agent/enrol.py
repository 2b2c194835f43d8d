"""``edgefleet agent enrol``: trade a one-time token for the hub's root and a config."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.request import Request, urlopen

from agent.backends import RUNTIMES
from agent.config import DEFAULT_ENDPOINT, AgentConfig, ConfigError, endpoint_address
from agent.identity import DeviceIdentity
from agent.store import DeviceStore
from shared.trust import DeviceVerifier

__all__ = ["IDENTITY_DIR", "enrol", "identity_dir"]

IDENTITY_DIR = "identity"  # under state_dir: device.key, device.crt, ca.crt


def identity_dir(config: AgentConfig) -> Path:
    """Where the device's key, certificate and CA certificate live."""
    return config.state_dir / IDENTITY_DIR


def enrol(
    *,
    hub_url: str,
    token: str,
    device_id: str,
    device_class: str,
    state_dir: Path,
    config_out: Path,
    endpoint: str = DEFAULT_ENDPOINT,
    timeout: float = 30.0,
    key: str = "",
) -> AgentConfig:
    """Trade a one-time enrolment token for the hub's TUF root (pinned here), a
    certificate for this device's own key (made here; it never leaves), and a config.

    Args:
        endpoint: the local inference endpoint the config names (``host:port``, or
            ``""`` for none): a second agent on one machine needs a port of its own.
        key: ``""`` for a key file made here, or a ``pkcs11:`` URI naming a key pair made
            in a token (docs/devices.md): the token signs the request.

    Raises:
        ConfigError: ``endpoint`` is not ``host:port`` or empty.
        Pkcs11Error: the token, its PIN or the key is not usable.
    """
    if endpoint and endpoint_address(endpoint) is None:
        raise ConfigError(f'--endpoint must be "host:port" or "", got {endpoint!r}')
    identity = DeviceIdentity.load(state_dir / IDENTITY_DIR, device_id, key)
    body = json.dumps(
        {
            "device_id": device_id,
            "token": token,
            "device_class": device_class,
            "csr": identity.csr_pem().decode(),
        }
    )
    req = Request(
        hub_url.rstrip("/") + "/enrol",
        data=body.encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urlopen(req, timeout=timeout) as resp:
        answer = json.loads(resp.read())
    store = DeviceStore(state_dir)
    DeviceVerifier(store.trust_dir, answer["root"].encode())
    if answer.get("certificate"):
        identity.store_certificate(answer["certificate"].encode(), answer["ca"].encode())
    # the class's runtime and memory budget, as the hub's profile of it says (if it knows it)
    runtime = answer.get("runtime") if answer.get("runtime") in RUNTIMES else None
    budget = answer.get("memory_budget_mb")
    budget = float(budget) if isinstance(budget, (int, float)) and budget > 0 else None
    config = AgentConfig(
        device_id=device_id,
        device_class=device_class,
        broker=answer["broker"],
        state_dir=state_dir,
        endpoint=endpoint,
        runtime=runtime or "onnxruntime",
        memory_budget_mb=budget,
        key=key,
    )
    lines = [
        "# edgefleet agent config: docs/agent.md lists every setting",
        f'device_id = "{device_id}"',
        f'device_class = "{device_class}"',
        f'broker = "{answer["broker"]}"',
        f'state_dir = "{state_dir}"',
        '# the local inference endpoint (host:port; "" turns it off); one port per agent',
        f'endpoint = "{endpoint}"',
    ]
    if runtime is not None:
        lines += ["# from the hub's profile of this device class", f'runtime = "{runtime}"']
    if budget is not None:
        lines.append(f"memory_budget_mb = {budget:g}  # all loaded models together")
    if key:
        lines += ["# the device's key, in a PKCS#11 token (docs/devices.md)", f'key = "{key}"']
    config_out.write_text("\n".join([*lines, ""]))
    return config
