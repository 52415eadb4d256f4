"""`horde-node`: set up a node (`init`), run it (`run`), build the tiny test model (`make-tiny-model`).

Every setting of node.config.NodeConfig is also a flag (`--queue-size 2`, `--nsfw/--no-nsfw`) and
an environment variable (`HORDE_NODE_QUEUE_SIZE`); flags win over the environment, which wins over
the config file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args, get_origin

from node.catalog import table_problems
from node.config import (
    CATALOG_FLAG_HELP,
    ConfigError,
    NodeConfig,
    build_config,
    env_layer,
    load_config,
    merge_layers,
    parse_catalog_flag,
    parse_setting_text,
    read_file_layer,
    resolve_config_path,
)
from node.config_file import write_config
from node.console import Console, quiet_libraries, setup_logging
from node.lock import exclusive, file_lock, folder_lock

EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.command(args))
    except ConfigError as exc:
        print(f"horde-node: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # nobody planned for it: one line, and the traceback with -vv
        if getattr(args, "verbose", 0) >= 2:
            raise
        print(f"horde-node: {type(exc).__name__}: {exc} (run again with -vv for the traceback)", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        help="config file, or a folder holding config.toml "
        "(default: $HORDE_NODE_CONFIG_DIR/config.toml or ~/.config/horde-node/config.toml)",
    )
    common.add_argument("--log-format", choices=("human", "json"), default="human")
    common.add_argument("-v", "--verbose", action="count", default=0, help="more detail (-vv: debug)")
    common.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")

    parser = argparse.ArgumentParser(prog="horde-node", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    init = commands.add_parser("init", parents=[common], help="write the config file and the node key")
    init.add_argument("--register", metavar="USERNAME", help="create an owner account and store its apikey")
    add_setting_flags(init)
    init.set_defaults(command=cmd_init)

    run = commands.add_parser("run", parents=[common], help="run the node until interrupted")
    add_setting_flags(run)
    run.set_defaults(command=cmd_run)

    show = commands.add_parser("show-config", parents=[common], help="print the effective settings as TOML")
    add_setting_flags(show)
    show.set_defaults(command=cmd_show_config)

    tiny = commands.add_parser("make-tiny-model", parents=[common], help="build the tiny test model")
    tiny.add_argument("directory", type=Path)
    tiny.add_argument("--add-to-config", action="store_true", help="serve it as tiny-sd from the config")
    tiny.set_defaults(command=cmd_make_tiny_model)

    extras = commands.add_parser(
        "make-tiny-extras", parents=[common], help="build tiny safety checkers, upscalers, ... for the tiny model"
    )
    extras.add_argument("directory", type=Path)
    extras.set_defaults(command=cmd_make_tiny_extras)
    return parser


# -- settings as flags ------------------------------------------------------------------------------


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("settings (override the config file and HORDE_NODE_* variables)")
    for name, field in NodeConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        dest = f"setting_{name}"
        if name == "catalog":
            group.add_argument(
                flag, dest=dest, action="append", metavar="NAME=SOURCE[@BASELINE]", help=CATALOG_FLAG_HELP
            )
        elif _is_bool(field.annotation):
            group.add_argument(
                flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=field.description
            )
        else:
            metavar = "A,B" if name in ("models", "blacklist") else name.upper()
            group.add_argument(flag, dest=dest, default=None, metavar=metavar, help=field.description)


def _is_bool(annotation: Any) -> bool:
    return annotation is bool or (get_origin(annotation) is not None and bool in get_args(annotation))


def flag_layer(args: argparse.Namespace) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    for name in NodeConfig.model_fields:
        value = getattr(args, f"setting_{name}", None)
        if value is None:
            continue
        if name == "catalog":
            layer[name] = dict(parse_catalog_flag(item) for item in value)
        elif isinstance(value, str):
            layer[name] = parse_setting_text(name, value, source="--" + name.replace("_", "-"))
        else:
            layer[name] = value
    return layer


def config_from_args(args: argparse.Namespace) -> tuple[NodeConfig, Path]:
    path = resolve_config_path(args.config)
    return load_config(path, flags=flag_layer(args)), path


def make_console(args: argparse.Namespace) -> Console:
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose > 1 else logging.INFO
    return Console(sys.stdout, args.log_format, level)


# -- commands ---------------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    from node.onboard import initialize

    path = resolve_config_path(args.config)
    values = merge_layers(read_file_layer(path), env_layer(), flag_layer(args))
    config = build_config(values, path.parent)
    console = make_console(args)
    return asyncio.run(initialize(config, path, console, register=args.register))


def cmd_show_config(args: argparse.Namespace) -> int:
    from node.config_file import render_toml

    config, path = config_from_args(args)
    print(f"# effective settings (file: {path})")
    print(render_toml(config), end="")
    return 0


def cmd_make_tiny_model(args: argparse.Namespace) -> int:
    from node.tiny_model import TINY_MODEL_BASELINE, TINY_MODEL_NAME, build_tiny_model

    folder = build_tiny_model(args.directory.expanduser().resolve())
    print(f"built {TINY_MODEL_NAME} in {folder}")
    if args.add_to_config:
        path = resolve_config_path(args.config)
        values = read_file_layer(path)
        values.setdefault("catalog", {})[TINY_MODEL_NAME] = {"source": str(folder), "baseline": TINY_MODEL_BASELINE}
        values["models"] = [*dict.fromkeys([*values.get("models", []), TINY_MODEL_NAME])]
        write_config(build_config(values, path.parent), path)
        print(f"{path}: serving {TINY_MODEL_NAME}")
    else:
        print(f'serve it with: --models {TINY_MODEL_NAME} --catalog "{TINY_MODEL_NAME}={folder}"')
    return 0


def cmd_make_tiny_extras(args: argparse.Namespace) -> int:
    from node.tiny_extras import EXTRAS_INDEX, build_tiny_extras

    folder = build_tiny_extras(args.directory.expanduser().resolve())
    print(f"built {', '.join(json.loads((folder / EXTRAS_INDEX).read_text()))} in {folder}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    config, path = config_from_args(args)
    problems = table_problems(config.catalog_table(), config.models)
    if problems:  # before the coordinator or torch: a wrong path is the operator's to fix, now
        raise ConfigError("catalog: " + "; ".join(problems))
    with contextlib.ExitStack() as held:
        if path.exists():
            held.enter_context(exclusive(file_lock(path), f"the config {path}"))
        held.enter_context(exclusive(folder_lock(config.spool_path), f"the spool {config.spool_path}"))
        return _run_daemon(args, config)


def _run_daemon(args: argparse.Namespace, config: NodeConfig) -> int:
    try:
        if args.verbose < 2:
            quiet_libraries()  # before the imports below, which already warn
        from node.daemon import NodeDaemon
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"`horde-node run` needs the node extra (module {(exc.name or '?').split('.')[0]!r} is missing): "
            "install the torch build for your GPU, then pip install -e '.[node]'"
        ) from None

    console = make_console(args)
    setup_logging(console, 0 if args.quiet else args.verbose)
    daemon = NodeDaemon(config, console=console)
    if config.metrics_port:
        from node.metrics import serve_metrics

        serve_metrics(daemon, config.metrics_port, config.metrics_address)
    code = asyncio.run(_run_with_signals(daemon, console))
    # Exit now: an inference or model-loading thread cannot be interrupted, and tearing down torch and
    # diffusers at interpreter exit takes seconds while doing nothing this process needs (the spool
    # and the config are written and closed by now).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


async def _run_with_signals(daemon: Any, console: Console) -> int:
    stop, hard_stop = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            hard_stop.set()
            return
        console.event(
            "log",
            logging.WARNING,
            message=f"{signal.Signals(signum).name}: stopping after the jobs in hand (signal again to abandon them)",
        )
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        return int(await daemon.run_until(stop, hard_stop))
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


if __name__ == "__main__":
    sys.exit(main())
