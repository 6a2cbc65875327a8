"""deploy/compose.yaml: Debian's docker-compose accepts it, and its topology runs. The private
engine here has no bridge network, so the services run on the host's network with the file's
settings, service names mapped to loopback ports and the public images to the local ones."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import aiohttp
import pytest
import yaml

from proxy.devstack.oci_client import (
    artifact_manifest,
    listed_referrers,
    push_manifest,
    push_subject_image,
    sha256,
)
from tests.containers.conftest import LOCKED_DOWN, ROOT, Stack, answers, wait_for

COMPOSE = ROOT / "deploy" / "compose.yaml"
SERVICES = yaml.safe_load(COMPOSE.read_text())["services"]


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="no docker-compose")
def test_docker_compose_accepts_the_file(docker_engine: str) -> None:
    checked = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config", "--quiet"], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr


async def test_compose_topology_serves_referrers(stack: Stack, http: aiohttp.ClientSession) -> None:
    _, registry = stack.registry(**SERVICES["registry"]["environment"])
    command = SERVICES["redis"]["command"]
    assert command[0] == "redis-server"
    _, redis = stack.redis(*command[1:])
    proxy_service = SERVICES["proxy"]
    assert {
        "read_only": proxy_service["read_only"],
        "cap_drop": proxy_service["cap_drop"],
        "security_opt": [option.split(":")[0] for option in proxy_service["security_opt"]],
    } == LOCKED_DOWN
    env = {
        name.removeprefix("REFERRERS_PROXY_").lower(): value.replace(
            "http://registry:5000", registry
        ).replace("redis://redis:6379/0", redis)
        for name, value in proxy_service["environment"].items()
    }
    proxy, url = stack.proxy(env.pop("upstream"), **env)
    await asyncio.to_thread(wait_for, lambda: answers(f"{url}/readyz") == 200, "proxy", proxy)
    image = await push_subject_image(http, url, "compose/app")
    referrer = artifact_manifest(image)
    assert (await push_manifest(http, url, "compose/app", referrer)).status == 201
    assert await listed_referrers(http, url, "compose/app", image) == [sha256(referrer)]
