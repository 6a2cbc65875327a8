"""What every Redis connection is opened with: TLS, user and password, from the URL and files."""

from pathlib import Path

from proxy.config import Settings, parse_upstream
from proxy.index.connect import connection_options

UPSTREAM = parse_upstream("http://r")


def test_plain_url_with_user_and_password() -> None:
    options = connection_options(Settings(UPSTREAM, redis_url="redis://app:p%40ss@h:6379/3"))
    assert options["username"] == "app"
    assert options["password"] == "p@ss"
    assert "ssl" not in options


def test_tls_verifies_against_the_ca_file(tmp_path: Path) -> None:
    ca = str(tmp_path / "ca.pem")
    options = connection_options(Settings(UPSTREAM, redis_url="rediss://h:6380", redis_ca_file=ca))
    assert options["ssl"] is True
    assert options["ssl_cert_reqs"] == "required"
    assert options["ssl_ca_certs"] == ca


def test_password_file_for_a_sentinel_set(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("from-a-secret\n")
    settings = Settings(
        UPSTREAM,
        redis_url="rediss://proxy@/0",
        redis_password_file=str(secret),
        redis_sentinel=(("s1", 26379),),
        redis_master="orp",
    )
    options = connection_options(settings)
    assert (options["username"], options["password"], options["ssl"]) == (
        "proxy",
        "from-a-secret",
        True,
    )
