"""Command line: every flag is also read from `REFERRERS_PROXY_<FLAG>`; a flag wins."""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from proxy import __version__
from proxy.config import (
    FallbackMode,
    LogFormat,
    ManifestCacheMode,
    Settings,
    SettingsError,
    check_pairs,
    parse_hosts,
    parse_listen,
    parse_redis_url,
    parse_token,
    parse_upstream,
)
from proxy.oci.legacy_tags import LegacyKind

ENV_PREFIX = "REFERRERS_PROXY_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError(f"must be a positive integer, got {value}")
    return number


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(f"must be zero or more, got {value}")
    return number


def _non_negative_float(value: str) -> float:
    number = float(value)
    if number < 0:
        raise ValueError(f"must be zero or more, got {value}")
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise ValueError(f"must be a positive number, got {value}")
    return number


def _log_level(value: str) -> str:
    level = value.strip().lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ValueError(f"must be one of debug, info, warning, error, got {value!r}")
    return level


def _log_format(value: str) -> LogFormat:
    try:
        return LogFormat(value.strip().lower())
    except ValueError:
        raise ValueError(f"must be text or json, got {value!r}") from None


def _fallback_mode(value: str) -> FallbackMode:
    try:
        return FallbackMode(value.strip().lower())
    except ValueError:
        raise ValueError(f"must be write, read or off, got {value!r}") from None


def _manifest_cache(value: str) -> ManifestCacheMode:
    try:
        return ManifestCacheMode(value.strip().lower())
    except ValueError:
        raise ValueError(f"must be memory, redis or off, got {value!r}") from None


def _bool(value: str) -> bool:
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"must be true or false, got {value!r}")


@dataclass(frozen=True)
class Option:
    """One setting as the user sees it: a flag, its env var, and how to read its text."""

    flag: str
    parse: Callable[[str], Any]
    help: str
    required: bool = False
    is_switch: bool = False

    @property
    def dest(self) -> str:
        return self.flag.replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.dest.upper()


SERVE_OPTIONS: tuple[Option, ...] = (
    Option("upstream", parse_upstream, "registry to front (http:// or https:// origin)", True),
    Option("listen", parse_listen, "address to serve on, HOST:PORT (default 127.0.0.1:8080)"),
    Option(
        "redis-url",
        parse_redis_url,
        "redis:// or rediss:// (TLS) URL for a shared index; without it the index is in-process",
    ),
    Option(
        "redis-max-connections",
        _positive_int,
        "Redis connections per process; more requests wait for one (default 64)",
    ),
    Option("redis-ca-file", str, "PEM bundle that verifies a rediss:// Redis (and sentinels)"),
    Option("redis-password-file", str, "file holding the Redis password (ACL user in the URL)"),
    Option(
        "redis-cluster",
        _bool,
        "--redis-url is a seed node of a Redis Cluster",
        is_switch=True,
    ),
    Option(
        "redis-sentinel",
        parse_hosts,
        "HOST:PORT[,HOST:PORT...] of Sentinels that find the master; needs --redis-master",
    ),
    Option("redis-master", str, "name of the master the Sentinels watch"),
    Option(
        "redis-wait-replicas",
        _non_negative_int,
        "replicas that must hold an index write before it is acknowledged"
        " (default 1 with a cluster or sentinels, else 0)",
    ),
    Option("upstream-ca-file", str, "PEM bundle to verify the upstream's TLS certificate"),
    Option(
        "upstream-insecure", _bool, "skip TLS verification of the upstream (unsafe)", is_switch=True
    ),
    Option("connect-timeout", _positive_float, "seconds to connect to the upstream (default 10)"),
    Option(
        "read-timeout", _positive_float, "seconds without upstream data before 504 (default 300)"
    ),
    Option("max-connections", _positive_int, "upstream pool for blob transfers (default 256)"),
    Option(
        "max-manifest-bytes", _positive_int, "largest manifest accepted, in bytes (default 4 MiB)"
    ),
    Option("referrers-page-size", _positive_int, "descriptors per referrers page (default 100)"),
    Option(
        "fallback-tags",
        _fallback_mode,
        "write, read or off: keep, only read, or ignore tag-schema indexes (default write)",
    ),
    Option(
        "fallback-refresh",
        _positive_float,
        "seconds before a tag-schema index is revalidated upstream (default 30)",
    ),
    Option(
        "max-annotation-bytes",
        _positive_int,
        "larger annotations (serialized) are left out of a referrer's descriptor (default 16384)",
    ),
    Option(
        "keep-tags",
        _bool,
        "tag each referrer under a hidden name so registry GC keeps it (default true)",
    ),
    Option(
        "tag-write-delay",
        _non_negative_float,
        "seconds a tag-schema index write waits for more changes, with keep tags on (default 1)",
    ),
    Option(
        "tag-index-max-bytes",
        _positive_int,
        "largest tag-schema index written; referrers past it are listed by the proxy alone"
        " (default 4 MiB)",
    ),
    Option(
        "show-fallback-tags",
        _bool,
        "list tag-schema tags (sha256-...) in tags/list, hidden by default",
        is_switch=True,
    ),
    Option(
        "auth-cache-seconds",
        _non_negative_float,
        "seconds a caller's upstream pull permission is remembered, 0 to always ask (default 30)",
    ),
    Option(
        "shutdown-grace",
        _non_negative_float,
        "seconds requests in flight may take to finish after SIGTERM (default 30)",
    ),
    Option("tls-cert", str, "PEM certificate (chain) to serve HTTPS with; needs --tls-key"),
    Option("tls-key", str, "PEM private key of --tls-cert"),
    Option("log-level", _log_level, "debug, info, warning or error (default info)"),
    Option("log-format", _log_format, "text, or json for one object per line (default text)"),
    Option(
        "control-connections",
        _positive_int,
        "upstream pool for all but blob transfers, the proxy's own calls included (default 64)",
    ),
    Option(
        "min-body-rate",
        _non_negative_float,
        "bytes/s a request body must keep up over --body-rate-window, else 408; 0: off"
        " (default 1024)",
    ),
    Option(
        "body-rate-window",
        _positive_float,
        "seconds over which --min-body-rate is judged (default 10)",
    ),
    Option(
        "max-transfers-per-client",
        _non_negative_int,
        "blob transfers at once per client address and per credential, else 429; 0: no limit"
        " (default 64)",
    ),
    Option(
        "manifest-cache",
        _manifest_cache,
        "memory, redis or off: where manifests fetched by digest are cached (default memory)",
    ),
    Option(
        "manifest-cache-seconds",
        _positive_float,
        "seconds a cached manifest is served; bounds staleness after a delete that bypasses"
        " the proxy (default 60)",
    ),
    Option(
        "manifest-cache-bytes",
        _positive_int,
        "bytes all cached manifests may take, per process or in Redis (default 64 MiB)",
    ),
    Option(
        "cascade-delete",
        _bool,
        "deleting a manifest by digest deletes its referrers too, recursively (default off)",
        is_switch=True,
    ),
    Option(
        "notifications-token",
        parse_token,
        "serve POST /notifications (registry events) to callers with this bearer token;"
        " prefer the env var",
    ),
    Option(
        "notifications-credentials-file",
        str,
        "file holding user:password the proxy reads pushed manifests with, for registry events",
    ),
    Option(
        "workers",
        _positive_int,
        "processes serving the listening port together (SO_REUSEPORT), each with its own"
        " upstream pools and caches; above 1 needs a Redis index (default 1)",
    ),
)


# The serve flags the subcommands take too: every one reaches the upstream; reindex also the index.
_LEGACY_SHARED = frozenset(
    {
        "upstream",
        "upstream-ca-file",
        "upstream-insecure",
        "connect-timeout",
        "read-timeout",
        "log-level",
        "log-format",
    }
)
_REINDEX_SHARED = _LEGACY_SHARED | {
    "redis-url",
    "redis-max-connections",
    "redis-ca-file",
    "redis-password-file",
    "redis-cluster",
    "redis-sentinel",
    "redis-master",
    "redis-wait-replicas",
    "max-annotation-bytes",
    "keep-tags",
}
_UPSTREAM_AUTH = (
    Option("upstream-username", str, "user for HTTP Basic auth to the upstream (not serve)"),
    Option("upstream-password", str, "its password; prefer the env var (not serve)"),
)
REINDEX_OPTIONS: tuple[Option, ...] = (
    *(option for option in SERVE_OPTIONS if option.flag in _REINDEX_SHARED),
    *_UPSTREAM_AUTH,
)
LEGACY_OPTIONS: tuple[Option, ...] = (
    *(option for option in SERVE_OPTIONS if option.flag in _LEGACY_SHARED),
    *_UPSTREAM_AUTH,
)


@dataclass(frozen=True)
class ReindexCommand:
    settings: Settings
    repositories: list[str]
    auth: str | None
    resume: Path | None
    import_native: bool = False


@dataclass(frozen=True)
class LegacyCommand:
    settings: Settings
    repositories: list[str]
    auth: str | None
    delete: bool
    force: bool
    only: LegacyKind | None


def _add_options(parser: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    for option in options:
        if option.is_switch:
            parser.add_argument(
                f"--{option.flag}", action="store_const", const="true", help=option.help
            )
        else:
            parser.add_argument(f"--{option.flag}", metavar=option.dest.upper(), help=option.help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="referrers-proxy",
        description="A reverse proxy that adds the OCI Referrers API to a container registry.",
        epilog=f"Every flag can also be set with {ENV_PREFIX}<FLAG>, e.g. {ENV_PREFIX}UPSTREAM.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the proxy")
    _add_options(serve, SERVE_OPTIONS)
    reindex = commands.add_parser("reindex", help="rebuild the index from the registry's content")
    prune = commands.add_parser("prune", help="find (and --delete) referrers of deleted subjects")
    for walk in (reindex, prune):
        _add_options(walk, REINDEX_OPTIONS)
        walk.add_argument(
            "--repository",
            action="append",
            default=[],
            metavar="NAME",
            help="only this repository (repeatable); default: every repository in the catalog",
        )
        walk.add_argument(
            "--resume",
            metavar="FILE",
            type=Path,
            help="checkpoint: finished repositories are appended to FILE, and skipped if it"
            " lists them",
        )
    prune.add_argument(
        "--delete", action="store_true", help="delete the orphans found (default: only list them)"
    )
    reindex.add_argument(
        "--import-native",
        action="store_true",
        help="if the registry answers the Referrers API, index its answers for every manifest read",
    )
    legacy = commands.add_parser(
        "legacy-artifacts",
        help="list (or --delete) the tag-schema indexes and keep tags of a legacy registry",
    )
    _add_options(legacy, LEGACY_OPTIONS)
    legacy.add_argument(
        "--repository",
        action="append",
        default=[],
        metavar="NAME",
        help="only this repository (repeatable); default: every repository in the catalog",
    )
    legacy.add_argument(
        "--only", choices=[kind.value for kind in LegacyKind], help="only tags of this kind"
    )
    legacy.add_argument("--delete", action="store_true", help="remove them (default: list)")
    legacy.add_argument(
        "--force",
        action="store_true",
        help="--delete even though the registry does not answer the Referrers API",
    )
    return parser


def _option_values(
    args: argparse.Namespace, environ: Mapping[str, str], options: Sequence[Option]
) -> dict[str, Any]:
    """Flags first, then env vars; what neither sets keeps the Settings default."""
    values: dict[str, Any] = {}
    for option in options:
        text = getattr(args, option.dest)
        source = f"--{option.flag}"
        if text is None and option.env in environ:
            text, source = environ[option.env], option.env
        if text is None:
            if option.required:
                raise SettingsError(f"--{option.flag} (or {option.env}) is required")
            continue
        try:
            value = option.parse(text)
        except ValueError as exc:
            raise SettingsError(f"{source}: {exc}") from exc
        if option.flag == "listen":
            values["listen_host"], values["listen_port"] = value
        else:
            values[option.dest] = value
    return values


def settings_from_args(argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    return _serve_settings(build_parser().parse_args(list(argv)), environ)


def reindex_from_args(argv: Sequence[str], environ: Mapping[str, str]) -> ReindexCommand:
    return _reindex_command(build_parser().parse_args(list(argv)), environ)


def _serve_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    return check_pairs(Settings(**_option_values(args, environ, SERVE_OPTIONS)))


def _basic_auth(values: dict[str, Any]) -> str | None:
    """Takes the upstream user and password out of `values`: the Authorization they make."""
    username = values.pop("upstream_username", None)
    password = values.pop("upstream_password", "")
    if username is None:
        return None
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def _reindex_command(args: argparse.Namespace, environ: Mapping[str, str]) -> ReindexCommand:
    values = _option_values(args, environ, REINDEX_OPTIONS)
    auth = _basic_auth(values)
    return ReindexCommand(
        check_pairs(Settings(**values)),
        args.repository,
        auth,
        args.resume,
        getattr(args, "import_native", False),
    )


def legacy_from_args(argv: Sequence[str], environ: Mapping[str, str]) -> LegacyCommand:
    return _legacy_command(build_parser().parse_args(list(argv)), environ)


def _legacy_command(args: argparse.Namespace, environ: Mapping[str, str]) -> LegacyCommand:
    values = _option_values(args, environ, LEGACY_OPTIONS)
    auth = _basic_auth(values)
    only = LegacyKind(args.only) if args.only else None
    settings = check_pairs(Settings(**values))
    return LegacyCommand(settings, args.repository, auth, args.delete, args.force, only)


def _run_legacy(command: LegacyCommand) -> int:
    from proxy.services.legacy_cleanup import legacy_artifacts

    try:
        summary = asyncio.run(
            legacy_artifacts(
                command.settings,
                repositories=command.repositories,
                auth=command.auth,
                delete=command.delete,
                force=command.force,
                only=command.only,
            )
        )
    except _walk_failures() as exc:
        return _walk_failed("legacy-artifacts", exc)
    return 1 if summary.errors else 0


def _walk_failures() -> tuple[type[Exception], ...]:
    """What ends a walk: its own refusal, or the registry or index failing under it."""
    from proxy.index import IndexUnavailable
    from proxy.services.registry_lists import READ_FAILURES, WalkRefused

    return (WalkRefused, IndexUnavailable, *READ_FAILURES)


def _walk_failed(name: str, exc: Exception) -> int:
    from proxy.services.registry_lists import WalkRefused

    failure = str(exc) if isinstance(exc, WalkRefused) else f"{type(exc).__name__}: {exc}"
    sys.stderr.write(f"referrers-proxy {name}: {failure}\n")
    return 1


def _checkpoint(path: Path | None, kind: str) -> tuple[set[str], TextIO | None]:
    """The repositories a `--resume` file lists as finished, and the file to append to. Its
    first line names the walk that started it (`# prune --delete`): what a dry run listed must
    not make a delete skip what it never deleted."""
    if path is None:
        return set(), None
    lines = path.read_text().splitlines() if path.exists() else []
    started = next((line for line in lines if line.startswith("#")), None)
    if started is not None and started != f"# {kind}":
        raise ValueError(f"--resume {path} was started by `{started[2:]}`, not `{kind}`")
    done = {line for line in lines if line and not line.startswith("#")}
    marks = path.open("a")
    if not lines:
        marks.write(f"# {kind}\n")
    return done, marks


def _run_walk(name: str, command: ReindexCommand, delete: bool) -> int:
    """`reindex`, or `prune` (dry run unless `delete`)."""
    from proxy.services.prune import prune
    from proxy.services.reindex import reindex

    kind = f"{name} --delete" if delete else name
    try:
        done, marks = _checkpoint(command.resume, kind)
    except ValueError as exc:
        sys.stderr.write(f"referrers-proxy {name}: {exc}\n")
        return 2
    walk = (
        reindex(
            command.settings,
            repositories=command.repositories,
            auth=command.auth,
            done=done,
            marks=marks,
            import_native=command.import_native,
        )
        if name == "reindex"
        else prune(
            command.settings,
            repositories=command.repositories,
            auth=command.auth,
            delete=delete,
            done=done,
            marks=marks,
        )
    )
    try:
        summary = asyncio.run(walk)
    except _walk_failures() as exc:
        return _walk_failed(name, exc)
    finally:
        if marks is not None:
            marks.close()
    return 1 if summary.errors else 0


def main(argv: Sequence[str] | None = None) -> None:
    from proxy.logs import configure_logging
    from proxy.server import serve

    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    command = args.command
    try:
        if command in ("reindex", "prune"):
            reindex = _reindex_command(args, os.environ)
            settings = reindex.settings
        elif command == "legacy-artifacts":
            legacy = _legacy_command(args, os.environ)
            settings = legacy.settings
        else:
            settings = _serve_settings(args, os.environ)
    except SettingsError as exc:
        sys.stderr.write(f"referrers-proxy: {exc}\n")
        raise SystemExit(2) from exc
    configure_logging(settings.log_level, settings.log_format)
    if command in ("reindex", "prune"):
        raise SystemExit(_run_walk(command, reindex, getattr(args, "delete", False)))
    if command == "legacy-artifacts":
        raise SystemExit(_run_legacy(legacy))
    if settings.workers > 1:
        from proxy.workers import supervise

        raise SystemExit(supervise(settings))
    serve(settings)
