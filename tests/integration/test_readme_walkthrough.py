"""The README's walk-through is run as written (with the proxy's address for P): an example that
shows nothing is a defect like any other."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from proxy.devstack.processes import Registry
from tests.conftest import StartProxy

README = (Path(__file__).parents[2] / "README.md").read_text()


def walkthrough() -> str:
    """The shell blocks of "A first minute with curl" and "Attach an artifact", in order."""
    start = README.index("### A first minute with curl")
    end = README.index("## Settings", start)
    blocks = re.findall(r"```sh\n(.*?)```", README[start:end], re.S)
    assert len(blocks) == 2
    return "".join(blocks)


async def test_the_walkthrough_attaches_and_lists_the_sbom(
    start_proxy: StartProxy, registry: Registry, tmp_path: Path
) -> None:
    proxy = await start_proxy(registry.url)
    script = walkthrough().replace("P=http://127.0.0.1:8080", f"P={proxy}", 1)
    assert f"P={proxy}" in script
    shell = await asyncio.create_subprocess_exec(
        "bash",
        "-euo",
        "pipefail",
        "-c",
        script,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(shell.communicate(), 60)
    assert shell.returncode == 0, err.decode()
    text = out.decode()
    assert '"tags":["v1"]' in text
    assert re.search(r"OCI-Subject: sha256:[0-9a-f]{64}", text)
    filtered = text.rsplit("OCI-Filters-Applied", 1)
    assert len(filtered) == 2, "the filtered answer says the filter was applied"
    assert '"artifactType":"application/spdx+json"' in filtered[1], "and lists the SBOM"
