"""Debian's nginx running deploy/nginx/front.conf.template, as the front of a registry and a
referrers proxy, on a free loopback port with its own prefix directory."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from string import Template

from proxy.devstack import free_port, stop, tcp_open, wait_until

NGINX_BIN = shutil.which("nginx") or "/usr/sbin/nginx"
TEMPLATE = Path(__file__).parents[2] / "deploy" / "nginx" / "front.conf.template"


@dataclass(frozen=True)
class Front:
    url: str
    process: subprocess.Popen[bytes]


def render(registry: str, proxy: str, listen: str) -> str:
    """The template as the official image's envsubst step renders it: only ${ORP_...}."""
    values = {"ORP_REGISTRY": registry, "ORP_PROXY": proxy, "ORP_LISTEN": listen}
    return Template(TEMPLATE.read_text()).safe_substitute(values)


@contextmanager
def running_front(workdir: Path, registry: str, proxy: str) -> Iterator[Front]:
    """`registry` and `proxy` are host:port."""
    if not Path(NGINX_BIN).exists():
        raise RuntimeError("nginx not found: install Debian's nginx (make test-system-deps)")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (workdir / "front.conf").write_text(render(registry, proxy, f"127.0.0.1:{port}"))
    temp = "\n".join(
        f"  {kind}_temp_path {workdir / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must reach the temp dirs
    (workdir / "nginx.conf").write_text(
        f"{user}daemon off;\nworker_processes 1;\npid {workdir / 'nginx.pid'};\n"
        f"error_log {workdir / 'error.log'} warn;\nevents {{ worker_connections 1024; }}\n"
        f"http {{\n  access_log off;\n{temp}\n  include {workdir / 'front.conf'};\n}}\n"
    )
    with (workdir / "stderr.log").open("ab") as log:
        process = subprocess.Popen(
            [NGINX_BIN, "-p", str(workdir), "-c", str(workdir / "nginx.conf"), "-e", "stderr"],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        try:
            wait_until(lambda: tcp_open(port), f"nginx on port {port}", process)
            yield Front(f"http://127.0.0.1:{port}", process)
        finally:
            stop(process)
