"""The image's HEALTHCHECK: exit 0 when the proxy in this container answers GET /healthz with 200.

Slim Python images have no curl, so the check uses the standard library. It asks the port that
REFERRERS_PROXY_LISTEN names, over HTTPS when REFERRERS_PROXY_TLS_CERT is set; the certificate is
not verified because the question is whether the process answers, not who it is.
"""

import os
import ssl
import sys
import urllib.request

listen = os.environ.get("REFERRERS_PROXY_LISTEN", "0.0.0.0:8080")
port = listen.rsplit(":", 1)[1]
scheme = "https" if os.environ.get("REFERRERS_PROXY_TLS_CERT") else "http"
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
try:
    url = f"{scheme}://127.0.0.1:{port}/healthz"
    with urllib.request.urlopen(url, timeout=4, context=context) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError as exc:
    sys.stderr.write(f"healthcheck: {exc}\n")
    sys.exit(1)
