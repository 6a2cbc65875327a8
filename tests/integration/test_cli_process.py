"""The console entry point as operators run it: a real process configured by env vars."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

from proxy.devstack.processes import Registry, free_port


def test_serve_configured_only_by_env_vars(registry: Registry) -> None:
    port = free_port()
    env = {
        **os.environ,
        "REFERRERS_PROXY_UPSTREAM": registry.url,
        "REFERRERS_PROXY_LISTEN": f"127.0.0.1:{port}",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1) as answer:
                    assert answer.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
                    break
            except OSError:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline, "proxy did not start"
                time.sleep(0.1)
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert f"listening on http://127.0.0.1:{port}, index: embedded" in stderr


def test_bad_settings_exit_2_with_a_one_line_reason() -> None:
    env = {**os.environ, "REFERRERS_PROXY_UPSTREAM": "ftp://nope"}
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "referrers-proxy: REFERRERS_PROXY_UPSTREAM: upstream must be an http:// or https:// URL,"
        " got 'ftp://nope'"
    )
