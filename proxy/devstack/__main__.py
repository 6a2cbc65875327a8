"""`make run` without UPSTREAM: the proxy in front of a throwaway registry."""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from proxy.cli import main as proxy_main
from proxy.devstack import REGISTRY_PORT, log, running_registry, tcp_open


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Serve the proxy in front of a throwaway registry on 127.0.0.1:5000."
    )
    parser.add_argument("--listen", default="127.0.0.1:8080")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if tcp_open(REGISTRY_PORT):
        raise SystemExit(
            f"127.0.0.1:{REGISTRY_PORT} is taken: stop what runs there, or front it with"
            f" `make run UPSTREAM=http://127.0.0.1:{REGISTRY_PORT}`"
        )
    with (
        tempfile.TemporaryDirectory(prefix="referrers-proxy-registry-") as workdir,
        running_registry(Path(workdir), port=REGISTRY_PORT) as registry,
    ):
        log.info(
            "started a throwaway Docker Distribution registry at %s (data in %s, deleted on"
            " exit); set UPSTREAM=URL to front your own registry instead",
            registry.url,
            registry.data_dir,
        )
        proxy_main(["serve", "--upstream", registry.url, "--listen", args.listen])


main()
