"""The image as shipped: locked down as the manifests run it, healthy by its own HEALTHCHECK,
and quick to serve."""

from __future__ import annotations

import time
from datetime import datetime

import docker
import pytest

from tests.containers.conftest import PROXY_IMAGE, Stack, answers, wait_for

START_TO_READY_LIMIT = 2.0  # seconds, from the engine's StartedAt to the first 200 on /readyz


def started_at(state: dict[str, str]) -> float:
    """The engine's StartedAt (nanoseconds, Z) as a Unix time."""
    stamp = state["StartedAt"].rstrip("Z")
    whole, _, fraction = stamp.partition(".")
    seconds = datetime.fromisoformat(whole + "+00:00").timestamp()
    return seconds + float(f"0.{fraction or 0}")


def test_image_runs_locked_down_and_turns_healthy(
    stack: Stack, registry: str, record_property: pytest.RecordProperty
) -> None:
    config = docker.from_env().images.get(PROXY_IMAGE).attrs["Config"]
    assert config["User"] == "65532:65532"
    assert config["Healthcheck"]["Test"] == ["CMD", "python", "/opt/healthcheck.py"]
    proxy, url = stack.proxy(registry)
    wait_for(lambda: answers(f"{url}/readyz") == 200, "proxy", proxy)
    ready = time.time()
    wrapped = proxy.get_wrapped_container()
    wrapped.reload()
    host_config = wrapped.attrs["HostConfig"]
    assert host_config["ReadonlyRootfs"] is True
    assert host_config["CapDrop"] == ["ALL"]
    assert host_config["SecurityOpt"] == ["no-new-privileges"]
    start_to_ready = ready - started_at(wrapped.attrs["State"])
    record_property("start_to_ready_seconds", round(start_to_ready, 3))
    print(f"start to ready: {start_to_ready:.2f} s")  # noqa: T201 (reported with -rP)
    assert start_to_ready < START_TO_READY_LIMIT

    ids = proxy.exec(["python", "-c", "import os; print(os.getuid(), os.getgid())"])
    assert ids.output.split() == [b"65532", b"65532"]
    status = proxy.exec(["grep", "-E", "^(CapEff|NoNewPrivs)", "/proc/1/status"])
    assert status.output.split() == [b"CapEff:", b"0000000000000000", b"NoNewPrivs:", b"1"]
    written = proxy.exec(["python", "-c", "open('/opt/venv/x', 'w')"])
    assert written.exit_code != 0
    assert b"Read-only file system" in written.output

    # The first check runs one interval (15 s) after the start.
    def healthy() -> bool:
        wrapped.reload()
        return bool(wrapped.attrs["State"]["Health"]["Status"] == "healthy")

    deadline = time.monotonic() + 40
    while not healthy() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert wrapped.attrs["State"]["Health"]["Status"] == "healthy", wrapped.attrs["State"]
