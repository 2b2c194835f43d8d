"""The agent as a device installs it: a .deb per class, installed offline into clean Debian.

``firmware-images/<class>/build`` makes the package (firmware-images/README.md); here it
goes into a debootstrap root (tests/debian_root.py, cached under .cache/) with ``dpkg -i``
and no network, the agent starts from the unit's own ``ExecStart`` inside the chroot
against a hub and Mosquitto on the host, converges and serves; then remove and purge
must leave the root as it was.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import shlex
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from debian_root import CHROOT_ENV, chroot, files, fresh_root, python_version
from waiting import wait_for

from edgefleet.client import HubClient
from edgefleet.demo import ApiServer
from hub import Hub, HubConfig
from hub.access.keys import ApiKeys, Role
from hub.transport.broker import Mosquitto, free_port
from shared.sensors import generate

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "firmware-images"
PACKAGE = "edgefleet-agent-generic-linux"
UNIT = "/lib/systemd/system/edgefleet-agent.service"
# what dpkg and the test itself change in the root, besides the package
NOT_THE_PACKAGE = (
    *("/proc", "/dev", "/run", "/tmp", "/var/log"),
    *("/var/lib/dpkg", "/var/cache/debconf"),
)
HUB_ONLY = ("fastapi", "sqlmodel", "scikit_learn", "tensorflow", "skl2onnx", "uvicorn")

F = TypeVar("F", bound=Callable[..., Any])


def deb(test: F) -> F:
    """Slow, and marked ``deb``: it builds a package (pip download on the first run)."""
    return pytest.mark.slow(pytest.mark.deb(pytest.mark.timeout(900)(test)))


def build(device_class: str, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``firmware-images/<class>/build`` as an operator runs it, with this test's Python."""
    return subprocess.run(
        [str(IMAGES / device_class / "build"), "--out", str(out), *args],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=900,
    )


def listing(package: Path) -> list[str]:
    out = subprocess.run(["dpkg-deb", "-c", str(package)], capture_output=True, text=True)
    return [line.split()[-1].removeprefix(".") for line in out.stdout.splitlines()]


def member(package: Path, path: str) -> str:
    """One file of the package's data, as text."""
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(package)], capture_output=True)
    with tarfile.open(fileobj=io.BytesIO(data.stdout)) as tar:
        found = tar.extractfile("." + path)
        assert found is not None, path
        return found.read().decode()


def field(package: Path, name: str) -> str:
    out = subprocess.run(["dpkg-deb", "-f", str(package), name], capture_output=True, text=True)
    return out.stdout.strip()


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("debootstrap, chroot and mount need root")
    with fresh_root(tmp_path_factory.mktemp("deb") / "root") as made:
        yield made


@pytest.fixture(scope="module")
def package(root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The amd64 package of generic-linux, its wheelhouse for the root's Python."""
    out = tmp_path_factory.mktemp("debs")
    done = build("generic-linux", out, "--arch", "amd64", "--python", python_version(root))
    assert done.returncode == 0, done.stderr
    return out / f"{PACKAGE}_0.1.0_amd64.deb"


@pytest.fixture(scope="module")
def installed(root: Path, package: Path) -> tuple[Path, set[str]]:
    """The root with the package installed offline; and its files before."""
    before = files(root, NOT_THE_PACKAGE)
    (root / "tmp" / package.name).write_bytes(package.read_bytes())
    done = chroot(root, "dpkg", "-i", f"/tmp/{package.name}", offline=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return root, before


def test_a_foreign_architecture_is_refused_by_name(tmp_path: Path) -> None:
    done = build("generic-linux", tmp_path, "--arch", "armhf")
    assert done.returncode == 2
    assert "generic-linux is not built for armhf" in done.stderr


@deb
def test_package_carries_wheelhouse_unit_template_and_scripts(package: Path) -> None:
    paths = listing(package)
    wheels = [p.rsplit("/", 1)[1] for p in paths if p.startswith("/opt/edgefleet/wheelhouse/")]
    names = {w.split("-")[0].lower() for w in wheels if w}
    assert {"edgefleet", "onnxruntime", "numpy", "paho_mqtt", "psutil", "tuf"} <= names
    assert not names & set(HUB_ONLY), "the device got the hub's dependencies"
    assert all("aarch64" not in w for w in wheels)
    assert any(w.startswith("onnxruntime-") and "x86_64" in w for w in wheels)
    for path in (UNIT, "/etc/edgefleet/agent.toml.template", "/opt/edgefleet/requirements.txt"):
        assert path in paths
    template = member(package, "/etc/edgefleet/agent.toml.template")
    assert 'device_class = "generic-linux"' in template  # the class's values filled in
    assert 'runtime = "onnxruntime"' in template and "memory_budget_mb = 64 " in template
    assert "${DEVICE_ID}" in template  # what enrol fills in stays a placeholder
    assert field(package, "Architecture") == "amd64"
    assert field(package, "Depends").startswith("python3 (>= 3.11~), python3 (<< 3.12~)")
    control = subprocess.run(["dpkg-deb", "-I", str(package)], capture_output=True, text=True)
    for script in ("postinst", "prerm", "postrm"):
        assert f"*  {script}" in control.stdout  # dpkg-deb's mark for an executable


@deb
@pytest.mark.parametrize(
    ("device_class", "runtime", "not_there"),
    [
        ("generic-linux", "onnxruntime-", "ai_edge_litert-"),
        ("pi-litert", "ai_edge_litert-", "onnxruntime-"),
        ("legacy-tflite", "tflite_runtime-", "onnxruntime-"),
    ],
)
def test_each_class_gets_its_runtime_for_arm64_where_it_cannot_run(
    tmp_path: Path, device_class: str, runtime: str, not_there: str
) -> None:
    """The wheelhouse follows the class's profile (extras, packages, numpy bound)."""
    done = build(device_class, tmp_path, "--arch", "arm64", "--python", "3.11")
    assert done.returncode == 0, done.stderr
    package = tmp_path / f"edgefleet-agent-{device_class}_0.1.0_arm64.deb"
    assert field(package, "Architecture") == "arm64"
    wheels = [p.rsplit("/", 1)[1] for p in listing(package) if p.endswith(".whl")]
    assert any(w.startswith(runtime) and "aarch64" in w for w in wheels), wheels
    assert not [w for w in wheels if w.startswith(not_there) or "x86_64" in w]
    numpy = next(w for w in wheels if w.startswith("numpy-"))
    assert numpy.startswith("numpy-1.") == (device_class == "legacy-tflite"), numpy
    assert "wheelhouse for arm64:" in done.stdout  # listed, though nothing here runs it


@deb
def test_missing_wheels_for_an_architecture_are_named(tmp_path: Path) -> None:
    """legacy-tflite on armhf: PyPI has no armv7l numpy<2 or psutil (piwheels has)."""
    done = build("legacy-tflite", tmp_path, "--arch", "armhf")
    assert done.returncode == 1
    assert "legacy-tflite armhf: no armhf wheel for Python 3.11 of: " in done.stderr
    missing = done.stderr.split(" of: ", 1)[1].split("\n")[0].split(", ")
    assert "psutil>=5.9" in missing and "numpy<2" in missing, done.stderr
    assert not list(tmp_path.glob("*.deb"))


@deb
def test_unit_passes_systemd_analyze_verify(installed: tuple[Path, set[str]]) -> None:
    root, _ = installed
    done = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", UNIT], capture_output=True, text=True
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    # and it can fail: a unit whose binary is not there
    broken = root / "etc/systemd/system/edgefleet-broken.service"
    broken.write_text((root / UNIT.lstrip("/")).read_text().replace("bin/edgefleet", "bin/nope"))
    try:
        done = subprocess.run(
            ["systemd-analyze", "verify", f"--root={root}", "/etc/systemd/system/" + broken.name],
            capture_output=True,
            text=True,
        )
        assert done.returncode != 0 and "bin/nope" in done.stderr
    finally:
        broken.unlink()


def service(unit: Path) -> tuple[list[str], dict[str, str]]:
    """The unit's ``ExecStart=`` command line, split as systemd would, and its environment.

    Only the specifiers the unit uses are expanded (%C: the system's cache directory).
    """
    settings = [ln.split("=", 1) for ln in unit.read_text().splitlines() if "=" in ln]
    start = [value for key, value in settings if key == "ExecStart"]
    assert len(start) == 1, start
    env = dict(
        kv.split("=", 1)
        for key, value in settings
        if key == "Environment"
        for kv in shlex.split(value.replace("%C", "/var/cache"))
    )
    return shlex.split(start[0]), {**CHROOT_ENV, **env}


def post(port: int, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("POST", path, json.dumps(body), {"content-type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


@deb
@pytest.mark.broker
def test_installed_agent_converges_serves_and_leaves_nothing_behind(
    installed: tuple[Path, set[str]],
    private_mosquitto: Mosquitto,
    tmp_path: Path,
) -> None:
    root, before = installed
    hub = Hub(HubConfig(data_dir=tmp_path / "hub", broker_url=private_mosquitto.address.url))
    hub.start()
    api = ApiServer(hub).start()
    client = HubClient(api.url, api_key=ApiKeys(hub.engine).create("t", Role.operator, "test").key)
    agent: subprocess.Popen[bytes] | None = None
    log = tmp_path / "agent.log"
    try:
        port = free_port()
        token = client.create_enrol_token("deb-1")["token"]
        enrol = ["/opt/edgefleet/venv/bin/edgefleet", "agent", "enrol", "--hub", api.url]
        enrol += ["--token", token, "--device-id", "deb-1", "--device-class", "generic-linux"]
        enrol += ["--state-dir", "/var/lib/edgefleet", "--config-out", "/etc/edgefleet/agent.toml"]
        done = chroot(root, *enrol, "--endpoint", f"127.0.0.1:{port}")
        assert done.returncode == 0, done.stderr
        with log.open("wb") as err:
            argv, env = service(root / UNIT.lstrip("/"))
            agent = subprocess.Popen(["chroot", str(root), *argv], stderr=err, env=env)
        wait_for(lambda: client.devices(status="online"), 60, "the chrooted agent online")
        job = client.train(n_train=2000, probation_s=1.0, probation_min_inferences=3)
        model = client.wait_job(job["id"], timeout=180)["result"]
        dep = client.deploy(model["name"], model["version"])
        x, y = generate(4, seed=5)
        deadline = time.monotonic() + 90
        while not client.deployment(dep["id"], devices=False)["finished"]:
            post(port, "/v1/predict", {"inputs": x.tolist(), "labels": y.tolist()})
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        st = client.deployment(dep["id"])
        assert st["per_device"][0]["stage"] == "healthy", (st, log.read_text())
        status, body = post(port, "/v1/predict", {"inputs": x.tolist()})
        assert status == 200, body
        assert (body["model"], body["version"]) == (model["name"], model["version"])
        assert len(body["outputs"]["label"]) == 4
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(20)
        client.close()
        api.stop()
        hub.stop()
    assert_removed_then_purged(root, before)


def assert_removed_then_purged(root: Path, before: set[str]) -> None:
    done = chroot(root, "dpkg", "-r", PACKAGE)
    assert done.returncode == 0, done.stdout + done.stderr
    for gone in ("/opt/edgefleet", UNIT, "/etc/edgefleet/agent.toml.template"):
        assert not (root / gone.lstrip("/")).exists(), f"{gone} left after dpkg -r"
    # remove keeps what the device learnt: its state and its enrolled config
    assert (root / "var/lib/edgefleet").is_dir()
    assert (root / "etc/edgefleet/agent.toml").is_file()
    done = chroot(root, "dpkg", "--purge", PACKAGE)
    assert done.returncode == 0, done.stdout + done.stderr
    left = files(root, NOT_THE_PACKAGE) - before
    assert left == set(), f"left after purge: {sorted(left)[:20]}"
