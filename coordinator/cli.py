"""`horde-coordinator`: run a coordinator and administer it.

    horde-coordinator serve [--host H] [--port P] [--data-dir D] [--db PATH|postgresql://...]
    horde-coordinator init                  # create the data directory (keys, database) and audit it
    horde-coordinator user add NAME [--kudos N]
    horde-coordinator grant USER AMOUNT
    horde-coordinator trust WORKER [--revoke]
    horde-coordinator moderator USER [--revoke]
    horde-coordinator audit

Every `serve` flag also reads a `HORDE_*` environment variable (flags win). Every command finds its
data the same way (DATA_RULE below), so the administration commands, run from any folder, see what
`serve` serves; they never create a data directory (only `serve` and `init` do).
"""

import argparse
import asyncio
import os
import signal
import socket
import sys
from dataclasses import replace
from pathlib import Path

from aiohttp import web

from coordinator.admin import NoData, admin
from coordinator.app import create_app
from coordinator.config import ConnectionLimits, CoordinatorConfig
from coordinator.connections import GuardedRunner, raise_open_files_limit
from coordinator.errors import HordeError
from coordinator.gcpolicy import defer_full_collections, run_collections
from coordinator.images import parse_s3_url
from coordinator.logs import configure_logging
from coordinator.storage import StorageUnavailable

DATA_RULE = "--data-dir, else $HORDE_DATA_DIR, else $XDG_DATA_HOME/horde-coordinator (~/.local/share/...)"


def env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"HORDE_{name}", default)


def default_data_dir() -> str:
    """One place for every command, whatever the current folder (see DATA_RULE)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return env("DATA_DIR") or str(Path(base) / "horde-coordinator")


def _shared_flags(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    # Accepted before or after the subcommand: the subcommand's copies default to SUPPRESS, so
    # they override the root's value only when given.
    def default(value: str | None) -> str | None:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--data-dir", default=default(default_data_dir()), help=f"database, images and keys ({DATA_RULE})"
    )
    parser.add_argument(
        "--db", default=default(env("DB")), help="SQLite file or postgresql:// URL (default: DATA_DIR/horde.db)"
    )
    parser.add_argument(
        "--log-level", default=default(env("LOG_LEVEL", "warning")), help="debug also shows the traceback of an error"
    )
    parser.add_argument("--log-format", choices=("text", "json"), default=default(env("LOG_FORMAT", "text")))


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="horde-coordinator", description="Run a Horde Network coordinator.")
    _shared_flags(root, defaults=True)
    shared = argparse.ArgumentParser(add_help=False)
    _shared_flags(shared, defaults=False)
    commands = root.add_subparsers(dest="command", required=True)

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=text, description=text, parents=[shared])

    serve = command("serve", "run the HTTP API")
    serve.add_argument("--host", default=env("HOST", "127.0.0.1"), help="bind address (default loopback only)")
    serve.add_argument("--port", type=int, default=int(env("PORT", "7001") or 7001), help="0 picks a free port")
    serve.add_argument("--port-file", help="write the bound port here once listening")
    serve.add_argument(
        "--images",
        default=env("IMAGES_DIR"),
        help="image folder (default DATA_DIR/images), or s3://BUCKET/PREFIX for S3-compatible storage",
    )
    serve.add_argument(
        "--s3-endpoint-url",
        default=env("S3_ENDPOINT_URL"),
        help="the S3 API address when not AWS (MinIO, R2, Garage...); credentials from AWS_*",
    )
    serve.add_argument(
        "--s3-public-url",
        default=env("S3_PUBLIC_URL"),
        help="the S3 address clients use in presigned URLs, if not the endpoint URL",
    )
    serve.add_argument("--public-url", default=env("PUBLIC_URL"), help="how clients reach this coordinator")
    serve.add_argument("--retention-hours", type=float, default=float(env("RETENTION_HOURS", "24") or 24))
    serve.add_argument("--max-body-mb", type=float, default=float(env("MAX_BODY_MB", "20") or 20))
    serve.add_argument(
        "--max-inline-mb",
        type=float,
        default=float(env("MAX_INLINE_MB", "2") or 2),
        help="base64 images one status answer carries in all (r2: false); the rest as URLs",
    )
    serve.add_argument(
        "--uptime-kudos",
        type=float,
        default=float(env("UPTIME_KUDOS", "50") or 50),
        help="kudos per 10 minutes online (0: off)",
    )
    serve.add_argument(
        "--volunteer-kudos",
        type=float,
        default=float(env("VOLUNTEER_KUDOS", "50") or 50),
        help="the most a node earns per 10 minutes for images nobody pays for (0: nothing)",
    )
    serve.add_argument(
        "--concurrency",
        type=int,
        default=int(env("CONCURRENCY", "30") or 30),
        help="images one account (or anonymous address) may have waiting or in progress",
    )
    serve.add_argument(
        "--unsafe-networks",
        default=env("UNSAFE_NETWORKS") or "",
        help="comma-separated CIDRs whose untrusted requests count as from an unsafe IP "
        "(nodes popping with allow_unsafe_ipaddr false never get them)",
    )
    serve.add_argument("--closed-registration", action="store_true", default=env("CLOSED_REGISTRATION") == "1")
    serve.add_argument("--no-rate-limits", action="store_true", default=env("NO_RATE_LIMITS") == "1")
    serve.add_argument(
        "--trust-proxy",
        action="store_true",
        default=env("TRUST_PROXY") == "1",
        help="believe X-Forwarded-For (only behind your own reverse proxy)",
    )
    serve.add_argument(
        "--webhooks-to-private",
        action="store_true",
        default=env("WEBHOOKS_TO_PRIVATE") == "1",
        help="let webhooks reach loopback, link-local and private addresses (a closed network)",
    )
    serve.add_argument(
        "--webhook-retry-seconds",
        type=float,
        default=float(env("WEBHOOK_RETRY_SECONDS") or 600),
        help="how long a failing webhook is retried, with backoff",
    )
    serve.add_argument(
        "--verify",
        action="store_true",
        default=env("VERIFY") == "1",
        help="verified work: hold rewards in escrow and spot-check nodes (docs/security.md)",
    )
    serve.add_argument(
        "--verification-window",
        type=float,
        default=float(env("VERIFICATION_WINDOW") or 3600),
        help="seconds a node's reward stays held before it is released (with --verify)",
    )
    limits = ConnectionLimits()
    serve.add_argument(
        "--header-timeout",
        type=float,
        default=float(env("HEADER_TIMEOUT") or limits.header_timeout),
        help="seconds for a request's headers to arrive (also the idle keep-alive time)",
    )
    serve.add_argument(
        "--body-timeout",
        type=float,
        default=float(env("BODY_TIMEOUT") or limits.body_timeout),
        help="seconds for a body to arrive, plus 1 s per 64 KiB it declares",
    )
    serve.add_argument(
        "--connections-per-ip",
        type=int,
        default=int(env("CONNECTIONS_PER_IP") or limits.per_ip),
        help="concurrent connections from one address (not applied with --trust-proxy)",
    )
    serve.add_argument(
        "--long-polls-per-ip",
        type=int,
        default=int(env("LONG_POLLS_PER_IP") or limits.long_polls_per_ip),
        help="concurrent pops and checks from one client address",
    )
    serve.add_argument(
        "--max-connections",
        type=int,
        default=int(env("MAX_CONNECTIONS") or limits.total),
        help="concurrent connections in all (default: the open-files limit less 256)",
    )

    command("init", "create the data directory, its keys and database (if missing), then audit it")
    user = command("user", "manage accounts").add_subparsers(dest="action", required=True)
    add = user.add_parser("add", help="create an account and print its apikey", parents=[shared])
    add.add_argument("name")
    add.add_argument("--kudos", type=float, default=0.0)

    grant = command("grant", "grant (or, negative, remove) kudos")
    grant.add_argument("user")
    grant.add_argument("amount", type=float)

    trust = command("trust", "mark a worker (by name) as trusted, clearing its suspicion")
    trust.add_argument("worker")
    trust.add_argument("--revoke", action="store_true")

    moderator = command("moderator", "let an account edit others (PUT /v2/users/{id}), as AI Horde's moderators")
    moderator.add_argument("user")
    moderator.add_argument("--revoke", action="store_true")

    command("audit", "re-walk the ledger chain and check every balance")
    return root


def config_from(args: argparse.Namespace) -> CoordinatorConfig:
    config = CoordinatorConfig(data_dir=Path(args.data_dir), database=args.db)
    if args.command == "serve":
        if args.images and args.images.startswith("s3://"):
            parse_s3_url(args.images)  # a malformed URL stops the command here
            config.images_bucket = args.images
        else:
            config.images_dir = Path(args.images) if args.images else None
        config.s3_endpoint_url = args.s3_endpoint_url
        config.s3_public_url = args.s3_public_url
        config.public_url = args.public_url
        config.retention_hours = args.retention_hours
        config.max_body_bytes = int(args.max_body_mb * 1024 * 1024)
        config.max_inline_bytes = int(args.max_inline_mb * 1024 * 1024)
        config.uptime_kudos_per_10_minutes = args.uptime_kudos
        config.volunteer_kudos_per_10_minutes = args.volunteer_kudos
        config.concurrency = args.concurrency
        config.unsafe_networks = tuple(net.strip() for net in args.unsafe_networks.split(",") if net.strip())
        config.open_registration = not args.closed_registration
        config.rate_limiting = not args.no_rate_limits
        config.trust_forwarded_for = args.trust_proxy
        config.webhook_private_addresses = args.webhooks_to_private
        config.webhook_retry_seconds = args.webhook_retry_seconds
        config.verification = replace(config.verification, enabled=args.verify, window=args.verification_window)
        config.connection_limits = replace(
            config.connection_limits,
            header_timeout=args.header_timeout,
            body_timeout=args.body_timeout,
            per_ip=args.connections_per_ip,
            long_polls_per_ip=args.long_polls_per_ip,
            total=args.max_connections,
        )
    return config


async def serve(config: CoordinatorConfig, host: str, port: int, port_file: str | None) -> None:
    raise_open_files_limit()  # before create_app, which sizes the connection cap from it
    runner = GuardedRunner(create_app(config))
    await runner.setup()
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    site = web.SockSite(runner, sock)
    await site.start()
    defer_full_collections()  # after start-up, which it freezes (coordinator/gcpolicy.py)
    collections = asyncio.create_task(run_collections())
    bound = sock.getsockname()[1]
    if port_file:
        await asyncio.to_thread(Path(port_file).write_text, str(bound))
    print(f"horde-coordinator listening on http://{host}:{bound}/api/ (data in {config.data_dir})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, stop.set)
    await stop.wait()
    collections.cancel()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    root = parser()
    args = root.parse_args(argv)
    configure_logging(args.log_level, args.log_format == "json")
    try:
        config = config_from(args)
    except ValueError as error:
        root.error(str(error))
    try:
        return run(args, config)
    except Exception as error:
        if str(args.log_level).lower() == "debug":
            raise
        print(f"error: {explain(error, config)}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace, config: CoordinatorConfig) -> int:
    try:
        if args.command == "serve":
            asyncio.run(serve(config, args.host, args.port, args.port_file))
            return 0
        return asyncio.run(admin(args, config))
    except NoData as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except HordeError as error:
        print(f"error: {error.message} ({error.rc})", file=sys.stderr)
        return 1
    except StorageUnavailable as error:  # the database (or the image store) is down: no traceback
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def explain(error: Exception, config: CoordinatorConfig) -> str:
    """One line for an error nobody planned for; `--log-level debug` shows the traceback instead."""
    if type(error).__module__.startswith("asyncpg"):
        return (
            f"PostgreSQL refused the connection: {error}; check the role and database names in "
            "--db / HORDE_DB (create the database with `createdb` first)"
        )
    return f"{type(error).__name__}: {error} (run with --log-level debug for the traceback)"


if __name__ == "__main__":
    sys.exit(main())
