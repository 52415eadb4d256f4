"""deploy/: the compose file, the Dockerfiles, the systemd units, the nginx config and the env examples.

Static checks tie the files to each other and to the project (entry points, settings, paths); the
live checks start the coordinator exactly as a unit or a container would (same arguments, same
environment, a temporary data dir) and, where nginx is installed, put deploy/nginx/horde.conf in
front of it. Docker itself is not needed: nothing here builds an image.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerfile_parse import DockerfileParser
from dotenv import dotenv_values

from protocol.jobs import MAX_LONG_POLL_SECONDS
from protocol.keys import Identity
from tests.helpers import Api
from transport.keyfiles import load_identity

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
NGINX_CONF = DEPLOY / "nginx" / "horde.conf"
HEALTHCHECK = DEPLOY / "docker" / "healthcheck.py"
UNITS = {kind: DEPLOY / "systemd" / f"horde-{kind}.service" for kind in ("coordinator", "node")}
DOCKERFILES = {kind: DEPLOY / "docker" / f"{kind}.Dockerfile" for kind in ("coordinator", "node")}
HEARTBEAT = "/api/v2/status/heartbeat"
REPLICAS = ("coordinator-1", "coordinator-2")
POSTGRES_DSN = os.environ.get("HORDE_TEST_POSTGRES_DSN")
# Debian puts nginx in /usr/sbin, which a non-root PATH may lack.
NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/local/sbin:/usr/sbin:/sbin")
NGINX_MISSING = "nginx is not installed (CI: apt-get install -y nginx-light, or nginx)"


# -- readers ---------------------------------------------------------------------------------------


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def console_scripts() -> dict[str, str]:
    return pyproject()["project"]["scripts"]


def script_module(name: str) -> str:
    return console_scripts()[name].partition(":")[0]


def read_env_file(path: Path, *, commented: bool = False) -> dict[str, str]:
    """KEY=VALUE lines as both systemd's EnvironmentFile= and compose's env_file read them (python-dotenv:
    whole-line comments, optional quotes). With commented=True, `# KEY=VALUE` lines are read instead."""
    lines = path.read_text().splitlines()
    if commented:
        lines = [COMMENTED_SETTING.sub("", line) if COMMENTED_SETTING.match(line) else "" for line in lines]
    values = dotenv_values(stream=io.StringIO("\n".join(lines)), interpolate=False)
    assert all(value is not None for value in values.values()), f"{path.name}: a line that is not KEY=VALUE"
    return {key: value or "" for key, value in values.items()}


COMMENTED_SETTING = re.compile(r"^\s*#\s*(?=[A-Z][A-Z0-9_]*=)")
Unit = dict[str, list[str]]


def read_unit(path: Path) -> Unit:
    """A systemd unit's settings: key -> every value (Environment= repeats). Its syntax is systemd's to
    judge: test_systemd_analyze_verify_accepts_the_units runs `systemd-analyze verify` on these files."""
    settings: Unit = {}
    for key, value in re.findall(r"^(\w+)=(.*)$", path.read_text(), re.MULTILINE):
        settings.setdefault(key, []).append(value.strip())
    return settings


def unit_sections(path: Path) -> set[str]:
    return set(re.findall(r"^\[(\w+)\]$", path.read_text(), re.MULTILINE))


def unit_environment(unit: Unit) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in unit.get("Environment", []):
        for word in shlex.split(line):
            key, _, value = word.partition("=")
            env[key] = value
    return env


def unit_setting(unit: Unit, key: str) -> str | None:
    values = unit.get(key)
    return values[-1] if values else None


@dataclass
class Dockerfile:
    """A Dockerfile as dockerfile-parse reads it: continued lines joined, comments set apart."""

    parsed: DockerfileParser

    @classmethod
    def read(cls, path: Path) -> Dockerfile:
        return cls(DockerfileParser(path=str(path)))

    def all(self, word: str) -> list[str]:
        return [str(item["value"]) for item in self.parsed.structure if item["instruction"] == word]

    def last(self, word: str) -> str:
        found = self.all(word)
        assert found, f"no {word} instruction"
        return found[-1]

    def exec_form(self, word: str) -> list[str]:
        value = json.loads(self.last(word))
        assert isinstance(value, list) and all(isinstance(item, str) for item in value), f"{word} not exec form"
        return value

    def env(self) -> dict[str, str]:
        """The final stage's environment (what the container runs with)."""
        return dict(self.parsed.envs)

    def healthcheck(self) -> list[str]:
        _options, _, command = self.last("HEALTHCHECK").partition("CMD ")
        assert command, "HEALTHCHECK without CMD"
        return list(json.loads(command))

    def copies(self) -> list[tuple[list[str], str]]:
        """(sources, destination) of COPY instructions that read the build context (no --from)."""
        found = []
        for rest in self.all("COPY"):
            words = [word for word in shlex.split(rest) if not word.startswith("--")]
            if "--from=" not in rest:
                found.append((words[:-1], words[-1]))
        return found


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def env_file_paths(service: dict[str, Any]) -> list[str]:
    entries = service.get("env_file", [])
    entries = [entries] if isinstance(entries, str | dict) else entries
    return [entry if isinstance(entry, str) else entry["path"] for entry in entries]


def coordinator_env_names() -> set[str]:
    """The HORDE_* variables the coordinator reads (`env("NAME")` in its CLI, or a literal HORDE_ name)."""
    names = set()
    for path in (ROOT / "coordinator").rglob("*.py"):
        text = path.read_text()
        names |= {f"HORDE_{name}" for name in re.findall(r"\benv\(\s*\"([A-Z0-9_]+)\"", text)}
        names |= set(re.findall(r"\"(HORDE_[A-Z0-9_]+)\"", text))
    return names


# -- the files point at each other ----------------------------------------------------------------


def test_every_deploy_path_mentioned_exists() -> None:
    """Paths named in the README, the units, the Dockerfiles, the compose file and the env examples."""
    readme = (DEPLOY / "README.md").read_text()
    table = re.findall(r"^\| `([^`]+)` \|", readme, re.M)
    for path in table:
        assert list(DEPLOY.glob(path)) if "*" in path else (DEPLOY / path).exists(), f"README lists {path}"
    assert table
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            for mention in re.findall(r"\bdeploy/[\w./-]*\w", path.read_text()):
                exists = (ROOT / mention).exists() or (ROOT / f"{mention}.example").exists()  # env/X.env: a copy
                assert exists, f"{path.relative_to(ROOT)} mentions {mention}, which is missing"
    for name in ("coordinator.key", "secret.key", "pg_dump", ".backup", "underscores_in_headers"):
        assert name in readme


# -- compose ---------------------------------------------------------------------------------------


def test_compose_parses_and_references_files_that_exist() -> None:
    spec = compose()
    services = spec["services"]
    assert {"postgres", "coordinator-init", *REPLICAS, "proxy", "node"} <= set(services)
    declared_volumes = set(spec.get("volumes") or {})
    for name, service in services.items():
        build = service.get("build")
        if build:
            context = (DEPLOY / build["context"]).resolve()
            assert context == ROOT, f"{name}: the build context should be the repository root"
            assert (context / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']} is missing"
        for env_file in env_file_paths(service):
            assert (DEPLOY / f"{env_file}.example").is_file(), f"{name}: no {env_file}.example to copy"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume["source"]
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name}: bind mount {source} is missing"
            else:
                assert source in declared_volumes, f"{name}: volume {source} is not declared"
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency}"
    ignored = (DEPLOY / ".gitignore").read_text()
    assert "env/*.env" in ignored, "real env files (secrets) must stay out of git"


def test_compose_replicas_share_database_keys_and_images_behind_the_proxy() -> None:
    services = compose()["services"]
    replicas = [services[name] for name in REPLICAS]
    first = replicas[0]
    env = first["environment"]
    assert env["HORDE_TRUST_PROXY"] == "1"
    for replica in replicas:
        assert replica["environment"] == env
        assert replica["volumes"] == first["volumes"]
        assert replica["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert replica["depends_on"]["coordinator-init"]["condition"] == "service_completed_successfully"
        assert "ports" not in replica, "only the proxy should be reachable from outside"
        assert env_file_paths(replica) == ["env/coordinator.env"]
    # coordinator-init creates the keys and migrates, with the same settings and volumes, before them.
    init = services["coordinator-init"]
    assert init["environment"] == env and init["volumes"] == first["volumes"]
    assert init["command"] == ["init"]
    # The data dir (coordinator.key, secret.key) and the images are named volumes, shared.
    mounts = dict(volume.split(":")[::-1][:2] for volume in first["volumes"])  # target -> source
    assert env["HORDE_DATA_DIR"] in mounts and env["HORDE_IMAGES_DIR"] in mounts

    # The shared PostgreSQL database, with the credentials of the postgres service.
    settings = read_env_file(DEPLOY / "env" / "coordinator.env.example")
    postgres_env = read_env_file(DEPLOY / "env" / "postgres.env.example")
    user, password, db = postgres_env["POSTGRES_USER"], postgres_env["POSTGRES_PASSWORD"], postgres_env["POSTGRES_DB"]
    assert settings["HORDE_DB"] == f"postgresql://{user}:{password}@postgres:5432/{db}"
    assert settings["HORDE_PUBLIC_URL"].startswith("https://")
    postgres = services["postgres"]
    assert any(volume.endswith(":/var/lib/postgresql/data") for volume in postgres["volumes"])
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])

    # The proxy: nginx with our config, in front of both replicas.
    proxy = services["proxy"]
    assert "./nginx/horde.conf:/etc/nginx/conf.d/default.conf:ro" in proxy["volumes"]
    assert set(proxy["depends_on"]) == set(REPLICAS)
    port = env["HORDE_PORT"]
    assert upstream_servers(NGINX_CONF.read_text()) == [f"{name}:{port}" for name in REPLICAS]


def test_compose_node_reserves_a_gpu() -> None:
    node = compose()["services"]["node"]
    assert node["profiles"] == ["node"], "a host without a GPU should still `docker compose up`"
    devices = node["deploy"]["resources"]["reservations"]["devices"]
    assert any(device["driver"] == "nvidia" and "gpu" in device["capabilities"] for device in devices)
    targets = {volume.split(":")[1] for volume in node["volumes"]}
    node_env = Dockerfile.read(DOCKERFILES["node"]).env()
    assert {node_env["HORDE_NODE_CONFIG_DIR"], node_env["HF_HOME"]} <= targets


# -- nginx -----------------------------------------------------------------------------------------


def upstream_servers(config: str) -> list[str]:
    block = re.search(r"upstream\s+horde_coordinators\s*\{(.*?)\}", config, re.S)
    assert block, "no upstream horde_coordinators"
    return re.findall(r"^\s*server\s+(\S+?)[\s;]", block.group(1), re.M)


def test_nginx_config_has_what_the_coordinator_needs() -> None:
    config = NGINX_CONF.read_text()
    active = "\n".join(line.split("#", 1)[0] for line in config.splitlines())
    assert re.search(r"^\s*underscores_in_headers\s+on;", active, re.M), "client_agent headers would be dropped"
    body = re.search(r"client_max_body_size\s+(\d+)m;", active)
    assert body and int(body.group(1)) >= 20
    for directive in ("proxy_read_timeout", "proxy_send_timeout"):
        timeout = re.search(rf"{directive}\s+(\d+)s;", active)
        assert timeout and int(timeout.group(1)) > MAX_LONG_POLL_SECONDS, f"{directive} must outlast long-polls"
    assert re.search(r"proxy_set_header\s+X-Forwarded-For\s+\$proxy_add_x_forwarded_for;", active)
    assert "proxy_pass http://horde_coordinators;" in active


# -- Dockerfiles -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_runs_a_project_entry_point_as_a_user(kind: str) -> None:
    dockerfile = Dockerfile.read(DOCKERFILES[kind])
    entrypoint = dockerfile.exec_form("ENTRYPOINT")
    assert entrypoint == [f"horde-{kind}"]
    assert entrypoint[0] in console_scripts()
    assert dockerfile.last("USER") not in ("root", "0"), "the service must not run as root"
    assert dockerfile.all("VOLUME")
    # The health check runs our script, copied from the build context to where it is called.
    health = dockerfile.healthcheck()
    copied = {destination: sources for sources, destination in dockerfile.copies()}
    assert copied[health[1]] == ["deploy/docker/healthcheck.py"]
    # Everything COPY takes from the context exists and gets past <Dockerfile>.dockerignore.
    allowed = dockerignore_allows(DOCKERFILES[kind])
    for sources, _ in dockerfile.copies():
        for source in sources:
            if source != ".":  # `COPY . .` takes what the dockerignore file lets through
                assert (ROOT / source).exists() and allowed(source), f"COPY {source}: missing or ignored"
    for package in pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert allowed(package.rstrip("*") + "/__init__.py"), f"package {package} would be left out of the image"
    assert allowed("pyproject.toml") and not allowed(".venv/bin/python") and not allowed(".git/HEAD")


def test_coordinator_image_is_slim_and_checks_the_heartbeat() -> None:
    dockerfile = Dockerfile.read(DOCKERFILES["coordinator"])
    assert "PYTHON_IMAGE=python:3.11-slim-bookworm" in dockerfile.all("ARG")
    assert all(base.startswith("${PYTHON_IMAGE}") for base in dockerfile.all("FROM"))
    runs = " ".join(dockerfile.all("RUN"))
    assert "pip install ." in runs and "[node]" not in runs, "the coordinator image must not install torch"
    env = dockerfile.env()
    assert dockerfile.exec_form("CMD") == ["serve", "--host", "0.0.0.0"]
    assert dockerfile.last("EXPOSE") == env["HORDE_PORT"]
    assert dockerfile.last("VOLUME") == json.dumps([env["HORDE_DATA_DIR"]])
    assert dockerfile.healthcheck()[2:] == ["http"]  # healthcheck.py http: the heartbeat on HORDE_PORT
    assert load_healthcheck().HEARTBEAT_PATH == HEARTBEAT


def test_node_image_has_cuda_torch_and_a_process_check() -> None:
    dockerfile = Dockerfile.read(DOCKERFILES["node"])
    base = [line for line in dockerfile.all("ARG") if line.startswith("BASE_IMAGE=")]
    assert base and "cuda" in base[0] and dockerfile.last("FROM") == "${BASE_IMAGE}"
    assert '".[node]"' in " ".join(dockerfile.all("RUN"))
    assert dockerfile.exec_form("CMD") == ["run"]
    assert dockerfile.healthcheck()[2:] == ["process", "horde-node"]
    env = dockerfile.env()
    volumes = json.loads(dockerfile.last("VOLUME"))
    assert sorted(volumes) == sorted([env["HORDE_NODE_CONFIG_DIR"], env["HF_HOME"]])


def dockerignore_allows(dockerfile: Path):
    """Docker's .dockerignore rules (last match wins, `!` re-includes), enough for our files."""
    rules = []
    for raw in dockerfile.with_name(dockerfile.name + ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            rules.append((negate, line.lstrip("!").rstrip("/")))

    def matches(pattern: str, path: str) -> bool:
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        return re.fullmatch(regex + "(/.*)?", path) is not None

    def allowed(path: str) -> bool:
        included = True
        for negate, pattern in rules:
            if matches(pattern, path):
                included = negate
        return included

    return allowed


# -- systemd ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(UNITS))
def test_systemd_unit_is_restarted_hardened_and_runs_a_console_script(kind: str) -> None:
    unit = read_unit(UNITS[kind])
    assert {"Unit", "Service", "Install"} <= unit_sections(UNITS[kind])
    exec_start = shlex.split(unit_setting(unit, "ExecStart") or "")
    assert Path(exec_start[0]).is_absolute() and Path(exec_start[0]).name == f"horde-{kind}"
    assert Path(exec_start[0]).name in console_scripts()
    assert unit_setting(unit, "Restart") == "on-failure"
    assert unit_setting(unit, "RestartSec")
    assert unit_setting(unit, "User") not in (None, "root")
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert unit_setting(unit, key) == value, f"{key}={value}"
    env_files = unit["EnvironmentFile"]
    assert env_files and all(Path(path.lstrip("-")).is_absolute() for path in env_files)
    writable = " ".join(unit["ReadWritePaths"]).split()
    env = unit_environment(unit)
    state = env["HORDE_DATA_DIR"] if kind == "coordinator" else env["HORDE_NODE_CONFIG_DIR"]
    assert state in writable and state == f"/var/lib/{unit_setting(unit, 'StateDirectory')}"
    if kind == "node":
        assert Path(env["HF_HOME"]).is_relative_to(f"/var/cache/{unit_setting(unit, 'CacheDirectory')}")
        assert any(path.startswith("/var/cache/") for path in writable)
        assert unit_setting(unit, "PrivateDevices") in (None, "no"), "the node needs the GPU devices"
        assert any("nvidia" in rule for rule in unit["DeviceAllow"])
    else:
        assert unit_setting(unit, "PrivateDevices") == "yes"


@pytest.fixture
def stub_commands(tmp_path: Path) -> Path:
    """bin/horde-* that run this checkout's modules, as an installed console script would."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name, target in console_scripts().items():
        script = folder / name
        module = target.partition(":")[0]
        script.write_text(f'#!/bin/sh\nPYTHONPATH={shlex.quote(str(ROOT))} exec {sys.executable} -m {module} "$@"\n')
        script.chmod(0o755)
    return folder


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path, stub_commands: Path) -> None:
    """The units as shipped, with ExecStart pointing at existing commands and the env file at its example."""
    examples = {
        "/etc/horde-network/coordinator.env": DEPLOY / "env" / "coordinator-single-host.env.example",
        "/etc/horde-network/node.env": DEPLOY / "env" / "node.env.example",
    }
    rendered = []
    for path in UNITS.values():
        text = path.read_text().replace("/opt/horde-network/bin", str(stub_commands))
        for installed, example in examples.items():
            text = text.replace(f"EnvironmentFile={installed}", f"EnvironmentFile={example}")
        (tmp_path / path.name).write_text(text)
        rendered.append(str(tmp_path / path.name))
    result = subprocess.run(["systemd-analyze", "verify", *rendered], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Unknown key" not in result.stderr and "Unknown section" not in result.stderr, result.stderr


# -- env examples ----------------------------------------------------------------------------------


# The S3 client's standard variables (botocore reads them for images in a bucket).
AWS_VARIABLES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}


@pytest.mark.parametrize("name", ["coordinator.env.example", "coordinator-single-host.env.example"])
def test_coordinator_env_examples_only_set_known_variables(name: str) -> None:
    known = coordinator_env_names() | AWS_VARIABLES
    path = DEPLOY / "env" / name
    for key in {**read_env_file(path), **read_env_file(path, commented=True)}:
        assert key in known, f"{name}: the coordinator reads no {key}"


def test_node_env_example_is_valid_node_configuration(tmp_path: Path) -> None:
    from node.config import CONFIG_DIR_ENV, ENV_PREFIX, load_config

    path = DEPLOY / "env" / "node.env.example"
    for values in (read_env_file(path), {**read_env_file(path), **read_env_file(path, commented=True)}):
        assert all(key.startswith(ENV_PREFIX) for key in values)
        values = {key: value for key, value in values.items() if key != CONFIG_DIR_ENV}
        config = load_config(tmp_path / "absent.toml", env=values)
        assert config.coordinator_url == values["HORDE_NODE_COORDINATOR_URL"]
        assert config.models
    # The unit points the node at its state and cache folders.
    unit_env = unit_environment(read_unit(UNITS["node"]))
    assert unit_env[CONFIG_DIR_ENV] == "/var/lib/horde-node"


# -- the coordinator starts as deployed ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def deployed_settings(flavour: str) -> tuple[dict[str, str], list[str]]:
    """The environment and the arguments after `horde-coordinator` of a unit or a compose replica."""
    if flavour == "systemd":
        unit = read_unit(UNITS["coordinator"])
        env = unit_environment(unit)
        env |= read_env_file(DEPLOY / "env" / "coordinator-single-host.env.example")  # EnvironmentFile wins
        return env, shlex.split(unit_setting(unit, "ExecStart") or "")[1:]
    dockerfile = Dockerfile.read(DOCKERFILES["coordinator"])
    replica = compose()["services"][REPLICAS[0]]
    env = {key: value for key, value in dockerfile.env().items() if key.startswith("HORDE_")}
    for env_file in env_file_paths(replica):
        env |= read_env_file(DEPLOY / f"{env_file}.example")
    env |= {key: str(value) for key, value in replica["environment"].items()}  # environment: wins
    return env, replica.get("command") or dockerfile.exec_form("CMD")


@dataclass
class Started:
    process: subprocess.Popen[bytes]
    port: int
    url: str
    log: Path

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=20)


def child_env(settings: dict[str, str], code: Path = ROOT) -> dict[str, str]:
    """The deployed settings and nothing else of ours; `code` is where the project is imported from."""
    base = {key: value for key, value in os.environ.items() if not key.startswith("HORDE_")}
    return base | settings | {"PYTHONPATH": str(code)}


@contextlib.contextmanager
def coordinator_as_deployed(
    settings: dict[str, str], args: list[str], workdir: Path, code: Path = ROOT
) -> Iterator[Started]:
    """`python -m coordinator.cli --data-dir TMP serve ... --host 127.0.0.1 --port 0 --port-file F`."""
    assert args[0] == "serve", args
    data_dir, port_file, log = workdir / "data", workdir / "port", workdir / "coordinator.log"
    command = [
        sys.executable,
        "-m",
        script_module("horde-coordinator"),
        "--data-dir",
        str(data_dir),
        *args,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--port-file",
        str(port_file),
    ]
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, env=child_env(settings, code), cwd=workdir, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            assert process.poll() is None, f"the coordinator exited: {log.read_text()}"
            assert time.monotonic() < deadline, f"the coordinator did not start: {log.read_text()}"
            time.sleep(0.1)
        port = int(port_file.read_text())
        started = Started(process, port, f"http://127.0.0.1:{port}", log)
        yield started
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers={"Client-Agent": "deploy-tests:1:local", **(headers or {})})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())


def isolated_settings(settings: dict[str, str], workdir: Path, database: str | None) -> dict[str, str]:
    """The deployed settings with the machine-specific paths swapped for temporary ones."""
    settings = dict(settings)
    settings["HORDE_DATA_DIR"] = str(workdir / "data")
    if "HORDE_IMAGES_DIR" in settings:
        settings["HORDE_IMAGES_DIR"] = str(workdir / "images")
    settings.pop("HORDE_DB", None)
    if database:
        settings["HORDE_DB"] = database
    return settings


def check_running(started: Started, settings: dict[str, str], data_dir: Path) -> str:
    status, body = http_get(started.url + HEARTBEAT)
    assert status == 200 and body["message"] == "OK", body
    status, info = http_get(started.url + "/api/v2/coordinator")
    assert status == 200 and info["public_key"].startswith("ed25519:")
    for name in ("coordinator.key", "secret.key"):
        assert (data_dir / name).stat().st_mode & 0o077 == 0, f"{name} must be private"
    assert load_identity(data_dir / "coordinator.key").public_key.text() == info["public_key"]
    if settings.get("HORDE_LOG_FORMAT") == "json":
        # The deployed log settings took effect: the start is logged as a JSON line at info level.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            lines = [line for line in started.log.read_text().splitlines() if line.startswith("{")]
            if any(json.loads(line).get("msg") == "coordinator ready" for line in lines):
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"no JSON 'coordinator ready' log line: {started.log.read_text()}")
    return info["public_key"]


def test_coordinator_starts_as_the_systemd_unit_runs_it(tmp_path: Path) -> None:
    settings, args = deployed_settings("systemd")
    settings = isolated_settings(settings, tmp_path, None)
    assert settings["HORDE_TRUST_PROXY"] == "1" and settings["HORDE_PUBLIC_URL"]
    with coordinator_as_deployed(settings, args, tmp_path) as started:
        check_running(started, settings, tmp_path / "data")
        assert started.stop() == 0, started.log.read_text()
    assert (tmp_path / "data" / "horde.db").exists(), "the single-host setup keeps SQLite in the data dir"


@contextlib.asynccontextmanager
async def compose_database():
    """The replicas' PostgreSQL where a test server is configured (and the engine exists), else SQLite."""
    try:
        import coordinator.storage.postgres  # noqa: F401
    except ImportError:
        yield None
        return
    if not POSTGRES_DSN:
        yield None
        return
    from tests.pg import fresh_database

    async with fresh_database(POSTGRES_DSN) as url:
        yield url


async def test_coordinator_starts_as_the_compose_replicas_run_it(tmp_path: Path) -> None:
    settings, args = deployed_settings("compose")
    assert settings["HORDE_DB"].startswith("postgresql://")
    async with compose_database() as database:
        settings = isolated_settings(settings, tmp_path, database)
        # coordinator-init: `horde-coordinator init` creates the keys and migrates before any replica.
        init = compose()["services"]["coordinator-init"]["command"]
        command = [sys.executable, "-m", script_module("horde-coordinator"), *init]
        result = await asyncio.to_thread(
            subprocess.run, command, env=child_env(settings), cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stdout + result.stderr
        key = load_identity(tmp_path / "data" / "coordinator.key").public_key.text()

        def replica() -> None:
            with coordinator_as_deployed(settings, args, tmp_path) as started:
                assert check_running(started, settings, tmp_path / "data") == key, "a replica made its own key"
                assert started.stop() == 0, started.log.read_text()

        await asyncio.to_thread(replica)
        # On PostgreSQL the data dir holds only the keys (and the images when not elsewhere).
        assert (tmp_path / "data" / "horde.db").exists() == (database is None)


# -- the installed package, as the images and the units get it ------------------------------------


def test_the_installed_package_ships_its_data_and_serves(tmp_path: Path) -> None:
    """`pip install .` (the Dockerfiles, the systemd recipe) must carry the non-Python files the code
    loads, such as the SQL migrations, and the coordinator must start from that copy alone."""
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(ROOT / "pyproject.toml", source)
    packages = [name.rstrip("*") for name in pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]]
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in packages:
        shutil.copytree(ROOT / package, source / package, ignore=ignore)
    if (ROOT / "README.md").exists():
        shutil.copy(ROOT / "README.md", source)
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    data_files = sorted(
        path.relative_to(source).as_posix()
        for package in packages
        for path in (source / package).rglob("*")
        if path.is_file() and path.suffix != ".py"
    )
    missing = [path for path in data_files if path not in shipped]
    assert not missing, (
        f"the wheel lacks {missing}; declare them in pyproject.toml, e.g. "
        '[tool.setuptools.package-data] coordinator = ["storage/migrations/*/*.sql"]'
    )

    target = tmp_path / "installed"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    settings, args = deployed_settings("compose")
    settings = isolated_settings(settings, tmp_path, None)
    # The installed copy, not this checkout, as in the image.
    with coordinator_as_deployed(settings, args, tmp_path, code=target) as started:
        status, body = http_get(started.url + HEARTBEAT)
        assert status == 200 and body["message"] == "OK"
        assert started.stop() == 0, started.log.read_text()


# -- the health check script -----------------------------------------------------------------------


def load_healthcheck():
    spec = importlib.util.spec_from_file_location("deploy_healthcheck", HEALTHCHECK)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_healthcheck(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), *args], capture_output=True, text=True, timeout=30, env=env
    )


def test_healthcheck_http_follows_the_coordinator(tmp_path: Path) -> None:
    settings, args = deployed_settings("compose")
    settings = isolated_settings(settings, tmp_path, None)
    with coordinator_as_deployed(settings, args, tmp_path) as started:
        # As in the image: no URL, the port from HORDE_PORT.
        env = {**os.environ, "HORDE_PORT": str(started.port)}
        assert run_healthcheck("http", env=env).returncode == 0
        assert run_healthcheck("http", started.url + HEARTBEAT).returncode == 0
        started.stop()
    failed = run_healthcheck("http", env={**os.environ, "HORDE_PORT": str(started.port)})
    assert failed.returncode == 1, failed.stdout
    assert run_healthcheck("nonsense").returncode == 1


def test_healthcheck_process_sees_a_console_script(tmp_path: Path) -> None:
    healthcheck = load_healthcheck()
    script = tmp_path / "horde-node"  # what `horde-node run` looks like: python /path/bin/horde-node run
    script.write_text("import time\ntime.sleep(60)\n")
    process = subprocess.Popen([sys.executable, str(script), "run"])
    mine = Path(f"/proc/{process.pid}")
    try:
        deadline = time.monotonic() + 10
        while not healthcheck._runs(mine, "horde-node"):
            assert time.monotonic() < deadline, "the running process was not found"
            time.sleep(0.05)
        assert healthcheck.check_process("horde-node")[0]
        assert run_healthcheck("process", "horde-node").returncode == 0
        assert run_healthcheck("process", "horde-no-such-command").returncode == 1
        assert not healthcheck._runs(mine, "horde-coordinator")
    finally:
        process.kill()
        process.wait()
    assert not healthcheck._runs(mine, "horde-node")


# -- nginx in front of the coordinator -------------------------------------------------------------


@dataclass
class NginxSite:
    prefix: Path
    config: Path

    def command(self, *extra: str) -> list[str]:
        log = str(self.prefix / "error.log")
        return [str(NGINX), "-p", f"{self.prefix}/", "-c", str(self.config), "-e", log, *extra]

    def start(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.command("-g", "daemon off;"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def render_nginx(prefix: Path, upstream: str, listen: str) -> NginxSite:
    """deploy/nginx/horde.conf as shipped, with the replicas' names and port 80 swapped for local
    addresses, included from a minimal nginx.conf that keeps every path inside `prefix`."""
    site = NGINX_CONF.read_text()
    for name in upstream_servers(site):
        site = site.replace(f"server {name} ", f"server {upstream} ")
    site, listens = re.subn(r"^(\s*)listen\s+80;", rf"\1listen {listen};", site, flags=re.M)
    assert listens == 1 and upstream_servers(site) == [upstream] * len(REPLICAS)
    (prefix / "horde.conf").write_text(site)
    config = prefix / "nginx.conf"
    config.write_text(f"""
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {prefix}/horde.conf;
}}
""")
    return NginxSite(prefix, config)


@pytest.fixture
def nginx_prefix() -> Iterator[Path]:
    # Not under pytest's 0700 tmp_path: nginx workers (user nobody when run as root) need to reach it.
    prefix = Path(tempfile.mkdtemp(prefix="horde-nginx-"))
    prefix.chmod(0o755)
    yield prefix
    shutil.rmtree(prefix, ignore_errors=True)


@pytest.mark.skipif(NGINX is None, reason=NGINX_MISSING)
def test_nginx_accepts_the_config(nginx_prefix: Path) -> None:
    site = render_nginx(nginx_prefix, "127.0.0.1:7001", f"127.0.0.1:{free_port()}")
    result = subprocess.run(site.command("-t"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(NGINX is None, reason=NGINX_MISSING)
async def test_nginx_proxies_to_the_coordinator(tmp_path: Path, nginx_prefix: Path) -> None:
    proxy_port = free_port()
    proxy_url = f"http://127.0.0.1:{proxy_port}"
    settings, args = deployed_settings("systemd")
    # Clients and nodes reach the coordinator through the proxy: that is its public URL.
    settings = isolated_settings(settings, tmp_path, None) | {"HORDE_PUBLIC_URL": proxy_url}
    with coordinator_as_deployed(settings, args, tmp_path) as started:
        site = render_nginx(nginx_prefix, f"127.0.0.1:{started.port}", f"127.0.0.1:{proxy_port}")
        nginx = site.start()
        try:
            deadline = time.monotonic() + 15
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", proxy_port), timeout=1):
                    break
                errors = (nginx_prefix / "error.log").read_text() if (nginx_prefix / "error.log").exists() else ""
                assert nginx.poll() is None, f"nginx exited: {errors}"
                assert time.monotonic() < deadline, f"nginx did not listen: {errors}"
                await asyncio.sleep(0.1)

            status, body = await asyncio.to_thread(http_get, proxy_url + HEARTBEAT, {"client_agent": "x:1:y"})
            assert status == 200 and body["message"] == "OK"

            # A request signed for the public URL verifies behind the proxy ...
            identity = Identity.generate()
            headers = {"Client-Agent": "deploy-tests:1:local", "client_agent": "deploy-tests:1:local"}
            api = Api(proxy_url, identity=identity)
            created = await api.post(
                "/v2/accounts", {"username": "proxied", "public_key": identity.public_key.text()}, headers=headers
            )
            assert created.status == 200, created.body
            # ... and one signed for another address (here, the replica itself) does not.
            direct = await Api(started.url, identity=Identity.generate()).post(
                "/v2/accounts", {"username": "direct", "public_key": None}, headers=headers
            )
            assert direct.status == 401, direct.body

            # Bodies past nginx's 1 MiB default reach the coordinator, which answers in JSON.
            big = await Api(proxy_url, apikey=created.body["apikey"]).post(
                "/v2/generate/async", {"prompt": "x" * (5 * 1024 * 1024), "params": {"nonsense": True}}
            )
            assert big.status != 413 and isinstance(big.body, dict), big.body
        finally:
            nginx.terminate()
            nginx.wait(timeout=20)
