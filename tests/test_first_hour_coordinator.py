"""`horde-coordinator` as a new operator meets it: one rule for the data directory, from any folder,
and one line (no traceback) for each mistake."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.first_hour_support import Proc, get_json, run, script, user_env

pytestmark = pytest.mark.timeout(300)
POSTGRES_DSN = os.environ.get("HORDE_TEST_POSTGRES_DSN")


def test_admin_commands_find_the_data_serve_uses_from_any_folder(tmp_path: Path) -> None:
    data = tmp_path / "srv" / "horde"
    elsewhere = tmp_path / "somewhere-else"
    elsewhere.mkdir()
    env = user_env(tmp_path, HORDE_DATA_DIR=str(data))
    # `serve --data-dir D` (the flag after the subcommand) serves D.
    port_file = tmp_path / "port"
    serve = Proc.start(
        [script("horde-coordinator"), "serve", "--data-dir", str(data), "--port", "0", "--port-file", str(port_file)],
        env,
        tmp_path,
    )
    try:
        serve.wait_for(rf"listening on http://127\.0\.0\.1:\d+/api/ \(data in {re.escape(str(data))}\)")
        url = f"http://127.0.0.1:{port_file.read_text()}"
        added = run([script("horde-coordinator"), "user", "add", "alice", "--kudos", "500"], env, elsewhere)
        assert added.rc == 0, added.both
        apikey = added.out.split("apikey: ")[1].strip()
        granted = run([script("horde-coordinator"), "grant", "alice", "100", "--data-dir", str(data)], env, elsewhere)
        assert granted.rc == 0, granted.both
        # The running coordinator knows the account the admin command created, with its kudos.
        me = get_json(f"{url}/api/v2/find_user", apikey)
        assert isinstance(me, dict) and me["username"].startswith("alice#") and me["kudos"] == 600
    finally:
        serve.stop()
    assert not (elsewhere / "horde-data").exists()
    assert sorted(path.name for path in elsewhere.iterdir()) == []


def test_admin_commands_share_the_default_data_dir_with_serve(tmp_path: Path) -> None:
    """No flag and no HORDE_DATA_DIR: both use ~/.local/share/horde-coordinator, whatever the folder."""
    env = user_env(tmp_path)
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    made = run([script("horde-coordinator"), "init"], env, first)
    assert made.rc == 0, made.both
    assert (tmp_path / ".local/share/horde-coordinator/secret.key").exists()
    added = run([script("horde-coordinator"), "user", "add", "bob"], env, second)
    assert added.rc == 0 and "created bob#1" in added.out, added.both


@pytest.mark.parametrize("command", [["user", "add", "alice"], ["grant", "alice", "5"], ["audit"], ["trust", "n"]])
def test_an_admin_command_never_creates_a_data_directory(tmp_path: Path, command: list[str]) -> None:
    env = user_env(tmp_path, HORDE_DATA_DIR=str(tmp_path / "typo"))
    done = run([script("horde-coordinator"), *command], env, tmp_path)
    line = done.one_line_error()
    assert done.rc == 1
    assert f"no coordinator data in {tmp_path / 'typo'}" in line and "HORDE_DATA_DIR" in line, line
    assert not (tmp_path / "typo").exists() and not (tmp_path / "horde-data").exists()


def test_data_dir_is_listed_by_serve_help(tmp_path: Path) -> None:
    done = run([script("horde-coordinator"), "serve", "--help"], user_env(tmp_path), tmp_path)
    assert done.rc == 0 and "--data-dir" in done.out and "HORDE_DATA_DIR" in done.out


@pytest.mark.skipif(not POSTGRES_DSN, reason="HORDE_TEST_POSTGRES_DSN is not set")
@pytest.mark.parametrize("part", ["database", "role"])
def test_a_wrong_postgresql_name_is_one_line(tmp_path: Path, part: str) -> None:
    assert POSTGRES_DSN
    scheme, rest = POSTGRES_DSN.split("://", 1)
    credentials, location = rest.rsplit("@", 1)
    host, _ = location.split("/", 1)
    dsn = (
        f"{scheme}://{credentials}@{host}/no_such_database"
        if part == "database"
        else f"{scheme}://no_such_role@{host}/{location.split('/', 1)[1]}"
    )
    env = user_env(tmp_path, HORDE_DATA_DIR=str(tmp_path / "data"), HORDE_DB=dsn)
    done = run([script("horde-coordinator"), "init"], env, tmp_path)
    line = done.one_line_error()
    assert line.startswith("error: PostgreSQL refused the connection:") and "no_such" in line, line
    assert "HORDE_DB" in line
    # The traceback is there for whoever asks for it.
    debug = run([script("horde-coordinator"), "--log-level", "debug", "init"], env, tmp_path)
    assert debug.rc != 0 and "Traceback" in debug.err
