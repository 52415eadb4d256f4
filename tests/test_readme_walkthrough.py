"""README.md, run as a new user runs it: every shell block, in order, against the installed scripts.

The shell lines come from README.md itself, so the README cannot drift from the commands again. What
this machine cannot do is explicit below, with the reason: the lines that are not run (SKIPPED) and
the words changed before running (SUBSTITUTIONS: a free port, temporary folders, the tiny offline
model instead of a hub download, small images for a 2-core CPU). Everything else runs exactly as
written, each line in `bash` from a scratch folder, and must succeed. `serve` and `horde-node run`
run until stopped, as the README says, so they start in the background and the walk waits until they
are ready, as a user waits before turning to a second terminal.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.first_hour_support import BIN, ROOT, Proc, free_port, get_json, run, user_env

pytestmark = pytest.mark.timeout(600)
README = ROOT / "README.md"

SKIPPED: dict[str, str] = {
    "make demo": "runs a whole network itself, in a loop of its own; tests/test_cli_demo.py runs `horde demo`",
    "make test": "runs the test suite, this test included",
    "pip install -e .": "installs the project: this test runs the console scripts of the environment `make install` "
    "made (a fresh one in CI), which is the same install",
    "pip install -e '.[node]'": "as `pip install -e .`, with the node extra, which `make install` includes",
    "pip install torch --index-url https://download.pytorch.org/whl/cu124": "downloads a CUDA build of torch; this "
    "machine has no GPU and no access to download.pytorch.org (the environment carries the CPU build)",
}
# Long-running commands: started in the background, then waited for until this line appears.
BACKGROUND: dict[str, str] = {
    "horde-coordinator serve": r"listening on http://",
    "horde-node run": r"serving sd-turbo",
}


@dataclass
class Walk:
    """The state a user accumulates: a shell environment (exports), folders, what commands printed."""

    home: Path
    port: int
    tiny_model: Path
    env: dict[str, str] = field(default_factory=dict)
    background: list[Proc] = field(default_factory=list)
    request_id: str | None = None
    ran: list[str] = field(default_factory=list)

    def substitutions(self) -> list[tuple[str, str, str]]:
        """(README text, what runs here, why)."""
        return [
            ("0.0.0.0", "127.0.0.1", "loopback only on a test machine"),
            ("HOST", "127.0.0.1", "the placeholder for the coordinator's host name"),
            (":7001", f":{self.port}", "a free port, so parallel runs and a real coordinator don't clash"),
            ("--port 7001", f"--port {self.port}", "the same free port"),
            (
                "sd-turbo=stabilityai/sd-turbo@stable_diffusion_2",
                f"sd-turbo={self.tiny_model}@stable_diffusion_1",
                "the tiny offline model under the README's model name: no hub download here",
            ),
            ("--size 512x512 --steps 20", "--size 64x64 --steps 2", "small images for a 2-core CPU"),
            ("images/ID_0.webp", f"images/{self.request_id}_0.webp", "the file `horde generate` saved"),
            # The README says the first 8 characters will do: the walk takes it at its word.
            (" ID", f" {(self.request_id or 'ID')[:8]}", "the request id `horde generate` printed"),
        ]

    def prepare(self, line: str) -> str:
        for before, after, _ in self.substitutions():
            line = line.replace(before, after)
        return line


def shell_blocks(text: str) -> Iterator[list[str]]:
    """Each ```sh block as its logical lines (continuations joined), comments and blanks dropped."""
    for block in re.findall(r"^```sh\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL):
        lines = [without_comment(line) for line in block.replace("\\\n", " ").splitlines()]
        yield [" ".join(line.split()) for line in lines if line.strip()]


def without_comment(line: str) -> str:
    """The line up to an unquoted `#` that starts a word, as the shell reads it."""
    quote = None
    for index, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index].rstrip()
    return line.rstrip()


def test_readme_code_fences_are_balanced_and_plain() -> None:
    """A fence with text after it (```` ``` SIGINT ````) turns the rest of the README into code."""
    opened = False
    for number, line in enumerate(README.read_text().splitlines(), 1):
        if "```" not in line:
            continue
        assert line.startswith("```"), f"README.md:{number}: a fence must start its line: {line!r}"
        if opened:
            assert line == "```", f"README.md:{number}: a closing fence must be alone on its line: {line!r}"
        else:
            assert re.fullmatch(r"```[a-z]*", line), f"README.md:{number}: an opening fence names a language only"
        opened = not opened
    assert not opened, "README.md ends inside a code block"


def test_the_walkthrough_skips_only_what_it_lists() -> None:
    """Every skipped line is still in the README (or the list is stale), and nothing else is skipped."""
    lines = [line for block in shell_blocks(README.read_text()) for line in block]
    for skipped in SKIPPED:
        assert skipped in lines, f"SKIPPED lists {skipped!r}, which README.md no longer has"
    assert any(line.startswith("horde generate") for line in lines)


def test_readme_walkthrough(tmp_path: Path, tiny_model_dir: Path) -> None:
    walk = Walk(home=tmp_path, port=free_port(), tiny_model=tiny_model_dir)
    work = tmp_path / "work"
    work.mkdir()
    walk.env = user_env(tmp_path, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    try:
        for block in shell_blocks(README.read_text()):
            for written in block:
                step(walk, written, work)
    finally:
        for proc in reversed(walk.background):
            proc.stop()
    # The walk reached the end of every block it could, and the images are what it said.
    assert walk.request_id is not None
    assert len(list((work / "images").glob(f"{walk.request_id}_*.webp"))) == 4
    assert any(line.startswith("horde ledger verify") for line in walk.ran)


def step(walk: Walk, written: str, work: Path) -> None:
    if written in SKIPPED:
        return
    line = walk.prepare(written)
    walk.ran.append(line)
    if line.startswith("export "):
        name, _, value = line.removeprefix("export ").partition("=")
        walk.env[name] = os.path.expandvars(value)
        return
    for command, ready in BACKGROUND.items():
        if line.startswith(command):
            proc = Proc.start(["bash", "-c", f"exec {line}"], walk.env, work)
            walk.background.append(proc)
            proc.wait_for(ready)
            if command == "horde-node run":
                node_online(walk, "my-node")
            return
    done = run(["bash", "-c", line], walk.env, work)
    assert done.rc == 0, f"README line failed: {written!r}\n(ran: {line!r})\n{done.both}"
    assert "Traceback" not in done.both, done.both
    if line.startswith("horde generate"):
        saved = re.search(r"images/([0-9a-f-]{36})_0\.webp", done.out)
        assert saved, done.both
        walk.request_id = saved[1]


def node_online(walk: Walk, name: str, within: float = 60.0) -> None:
    """Until the coordinator lists the node (it registers on its first pop, just after "serving")."""
    deadline = time.monotonic() + within
    url = f"http://127.0.0.1:{walk.port}/api/v2/workers"
    while time.monotonic() < deadline:
        workers = get_json(url)
        if isinstance(workers, list) and any(worker.get("name") == name for worker in workers):
            return
        time.sleep(0.2)
    raise AssertionError(f"{name} never appeared in {url}")


DOCUMENTS = [README, ROOT / "deploy" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def documented_commands() -> Iterator[tuple[str, str, list[str]]]:
    """(document, script, arguments) for each call of our scripts in a shell block of the documents.

    A script name counts where a subcommand follows it (so `journalctl -u horde-coordinator -f` and
    `useradd ... horde` are not calls).
    """
    from client.cli import build_parser as client_parser
    from coordinator.cli import parser as coordinator_parser
    from node.cli import build_parser as node_parser

    parsers = {"horde": client_parser(), "horde-coordinator": coordinator_parser(), "horde-node": node_parser()}
    for document in DOCUMENTS:
        for block in shell_blocks(document.read_text()):
            for line in block:
                if "horde" not in line:  # (a JSON body quoted across lines would not split here)
                    continue
                for words in commands_of(line):
                    for index, word in enumerate(words[:-1]):
                        name = Path(word).name
                        if name in parsers and words[index + 1] in subcommands(parsers[name]):
                            yield str(document.relative_to(ROOT)), name, words[index + 1 :]


def commands_of(line: str) -> Iterator[list[str]]:
    """The simple commands of a shell line, split at `&&`, `||`, `;` and `|` outside quotes."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words: list[str] = []
    for token in lexer:
        if token in ("&&", "||", ";", "|", "&"):
            yield words
            words = []
        else:
            words.append(token)
    yield words


def subcommands(parser: argparse.ArgumentParser) -> set[str]:
    return {
        name for action in parser._actions if isinstance(action, argparse._SubParsersAction) for name in action.choices
    }


def test_every_documented_command_parses(capsys: pytest.CaptureFixture[str]) -> None:
    """Commands in docs/ and deploy/ that this machine cannot run (systemd, docker) still take the
    arguments they are written with."""
    from client.cli import build_parser as client_parser
    from coordinator.cli import parser as coordinator_parser
    from node.cli import build_parser as node_parser

    parsers = {"horde": client_parser, "horde-coordinator": coordinator_parser, "horde-node": node_parser}
    seen = set()
    for document, name, arguments in documented_commands():
        seen.add(document)
        try:
            parsers[name]().parse_args(arguments)
        except SystemExit:
            pytest.fail(f"{document}: `{name} {' '.join(arguments)}` is refused: {capsys.readouterr().err}")
    assert {"README.md", "deploy/README.md"} <= seen
