"""`horde`: the command-line client. Errors the user can fix print one line on stderr, never a traceback.

Exit status: 0 success, 1 failure (API error, unreachable coordinator, failed verification),
2 bad command line, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, get_args

from client.errors import CoordinatorUnreachable, HordeAPIError, HordeClientError, Interrupted
from client.output import Output
from protocol.samplers import SamplerName

if TYPE_CHECKING:
    from client.context import Context

# A handler is named "module:function" under client/ and imported only when it runs, so `--help`,
# usage errors and offline commands don't pay for importing aiohttp.
Handler = Callable[["Context"], Coroutine[Any, Any, int]]
EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (`error: ...`) instead of the usage block plus a line."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {message} (see `{self.prog} --help`)\n")
        sys.exit(EXIT_USAGE)


def _common_flags() -> Parser:
    # SUPPRESS defaults, so a flag given before the subcommand is not reset by the subparser.
    common = Parser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS, help="coordinator URL (env HORDE_URL)")
    common.add_argument("--apikey", default=argparse.SUPPRESS, help="API key (env HORDE_API_KEY)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress or notes")
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an unexpected error"
    )
    return common


def build_parser() -> Parser:
    common = _common_flags()
    parser = Parser(prog="horde", description="Client for a Horde Network coordinator.", parents=[common])
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, handler: str, text: str) -> Parser:
        sub = commands.add_parser(name, help=text, description=text, parents=[common])
        sub.set_defaults(handler=handler)
        return sub

    _add_keys(commands, common)
    add("register", "commands_keys:register", "register your key as an account").add_argument("username")
    _add_generation_flags(add("generate", "commands_generate:generate", "request images and save them"))
    _add_save_flags(add("wait", "commands_generate:wait", "wait for a request, then save its images"), wait=True)
    add("status", "commands_generate:status", "show a request's progress and images").add_argument("id")
    add("cancel", "commands_generate:cancel", "cancel a request (finished images are kept)").add_argument("id")
    add("kudos", "commands_account:kudos", "show your kudos and recent ledger entries").add_argument(
        "--limit", type=int, default=10, help="recent ledger entries to show (default 10)"
    )
    _add_transfer(add("transfer", "commands_account:transfer", "send kudos to another user"))
    add("workers", "commands_network:workers", "list the network's workers")
    add("models", "commands_network:models", "what the network can serve now, with queue and ETA")
    _add_verify(add("verify", "commands_verify:verify", "verify saved images offline against their sidecars"))
    _add_ledger(commands, common)
    _add_webhook(commands, common)
    _add_demo(add("demo", "demo:run", "run a coordinator and a tiny node locally and generate"))
    return parser


def _add_keys(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    keys = commands.add_parser("keys", help="your Ed25519 identity", parents=[common])
    actions = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    new = actions.add_parser("new", help="create a new identity", parents=[common])
    new.add_argument("--force", action="store_true", help="replace an existing identity (the old key is lost)")
    new.set_defaults(handler="commands_keys:keys_new")
    actions.add_parser("show", help="print your public key", parents=[common]).set_defaults(
        handler="commands_keys:keys_show"
    )


def _add_ledger(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    ledger = commands.add_parser("ledger", help="the kudos ledger", parents=[common])
    actions = ledger.add_subparsers(dest="ledger_command", metavar="ACTION", required=True)
    check = actions.add_parser("verify", help="download and verify the whole ledger", parents=[common])
    check.add_argument("--coordinator-key", help="pin the coordinator key (ed25519:...) instead of asking it")
    check.add_argument("--page-size", type=int, default=500, help=argparse.SUPPRESS)
    check.set_defaults(handler="commands_verify:ledger_verify")


def _add_webhook(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    webhook = commands.add_parser("webhook", help="webhooks the coordinator sent you", parents=[common])
    actions = webhook.add_subparsers(dest="webhook_command", metavar="ACTION", required=True)
    check = actions.add_parser("verify", help="verify a received webhook POST offline", parents=[common])
    check.add_argument("--webhook-url", required=True, help="the webhook URL it was POSTed to (as you gave it)")
    check.add_argument("--headers", required=True, metavar="FILE", help="its headers, one 'Name: value' a line")
    check.add_argument("--body", required=True, metavar="FILE", help="its body, byte for byte")
    check.add_argument("--coordinator-key", help="require this coordinator's key (ed25519:...)")
    check.set_defaults(handler="commands_webhook:webhook_verify")


def _add_generation_flags(sub: Parser) -> None:
    sub.add_argument("prompt")
    sub.add_argument("--model", help="model name (default: any the network serves)")
    sub.add_argument("-n", type=int, help="number of images (default 1)")
    sub.add_argument("--size", metavar="WxH", help="image size, multiples of 64 (default 512x512)")
    sub.add_argument("--steps", type=int, help="sampling steps (default 30)")
    sub.add_argument("--sampler", choices=get_args(SamplerName), metavar="NAME", help="sampler (k_euler_a, ...)")
    sub.add_argument("--cfg", type=float, help="classifier-free guidance scale (default 7.5)")
    sub.add_argument("--seed", help="seed (default: random)")
    sub.add_argument("--negative", help="negative prompt")
    sub.add_argument("--source-image", type=Path, metavar="FILE", help="img2img source image")
    sub.add_argument("--strength", type=float, help="img2img denoising strength, 0.01..1")
    sub.add_argument("--mask", type=Path, metavar="FILE", help="inpainting mask (with --source-image)")
    sub.add_argument("--lora", action="append", metavar="NAME[:STRENGTH]", help="apply a LoRA (repeatable)")
    sub.add_argument("--nsfw", action="store_true", help="allow NSFW results")
    sub.add_argument("--no-wait", action="store_true", help="print the request id and return at once")
    _add_save_flags(sub, wait=False)


def _add_save_flags(sub: Parser, *, wait: bool) -> None:
    if wait:
        sub.add_argument("id")
    sub.add_argument("--out", default=".", metavar="DIR", help="folder for images and sidecars (default .)")
    sub.add_argument("--format", choices=("webp", "png"), default="webp", help="saved image format")
    sub.add_argument("--cancel-on-interrupt", action="store_true", help="Ctrl-C cancels the request without asking")


def _add_transfer(sub: Parser) -> None:
    sub.add_argument("user", help="recipient username (name#id or name)")
    sub.add_argument("amount", type=float, help="kudos to send")
    sub.add_argument("--idempotency-key", help="reuse the key of an earlier attempt to retry it safely")


def _add_demo(sub: Parser) -> None:
    sub.add_argument("prompt")
    sub.add_argument("--out", default="demo-output", metavar="DIR", help="output folder (default demo-output)")
    sub.add_argument("-n", type=int, default=2, help="number of images (default 2)")
    sub.add_argument("--steps", type=int, default=8, help="sampling steps (default 8)")
    sub.add_argument("--size", default="128x128", metavar="WxH", help="image size (default 128x128)")
    sub.add_argument("--format", choices=("webp", "png"), default="webp", help="saved image format")
    sub.add_argument("--keep-temp", action="store_true", help="keep the logs and data folder (for debugging)")


def _add_verify(sub: Parser) -> None:
    sub.add_argument("files", nargs="+", metavar="FILE", help="saved image (or its .json sidecar)")
    sub.add_argument("--coordinator-key", help="require the job to be signed by this key (ed25519:...)")
    sub.add_argument(
        "--checks",
        action="store_true",
        help="also ask the coordinator whether each image was spot-checked, and by whom",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    output = Output(json=getattr(args, "json", False), quiet=getattr(args, "quiet", False))
    try:
        return asyncio.run(_resolve(args.handler)(_context(args, output)))
    except Interrupted:
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return EXIT_INTERRUPTED
    except HordeAPIError as exc:
        return _fail(f"error: {exc.describe()}")
    except CoordinatorUnreachable as exc:
        return _fail(f"error: cannot reach coordinator at {exc.url}: {exc.reason}")
    except HordeClientError as exc:
        return _fail(f"error: {exc}")
    except Exception as exc:  # a bug, or a failure nobody planned for: still one line unless asked
        if getattr(args, "debug", False):
            raise
        return _fail(f"error: {type(exc).__name__}: {exc} (run again with --debug for the traceback)")


def _resolve(handler: str) -> Handler:
    module, function = handler.split(":")
    resolved: Handler = getattr(importlib.import_module(f"client.{module}"), function)
    return resolved


def _context(args: argparse.Namespace, output: Output) -> Context:
    from client.context import Context

    return Context(args=args, output=output)


def _fail(line: str) -> int:
    sys.stderr.write(line.replace("\n", " ") + "\n")
    return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
