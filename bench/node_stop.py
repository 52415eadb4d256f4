"""How long an idle `horde-node run` takes to stop after SIGTERM (issue 14: it was 10–17 s, a whole long-poll).

A coordinator and a real node daemon (the tiny model, CPU) run as their own processes; once the node
serves, it idles inside its long-poll for a while, then gets SIGTERM; the figure is the time from the
signal to the process's exit. `--short` does one stop (CI sanity: it must stop within 5 s).

    python bench/node_stop.py [--short] [--runs N] [--idle SECONDS] [--json]
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1]
if str(SOURCE) not in sys.path:
    sys.path.insert(0, str(SOURCE))

from bench.common import Coordinator, Report, base_parser, summary, table, temporary_dir  # noqa: E402
from protocol.jobs import MAX_LONG_POLL_SECONDS  # noqa: E402

POP_WAIT = int(MAX_LONG_POLL_SECONDS)  # the longest long-poll a node may ask for: the worst case for a stop
SHORT_LIMIT_SECONDS = 5.0


def tiny_model() -> Path:
    folder = Path(os.environ.get("HORDE_TINY_MODEL_DIR") or SOURCE / ".cache" / "tiny-sd")
    if not (folder / "model_index.json").exists():
        raise SystemExit(f"no tiny model in {folder}: run `make install` and `horde-node make-tiny-model {folder}`")
    return folder


def init_node(home: Path, url: str, model: Path) -> dict[str, str]:
    env = {**os.environ, "HORDE_NODE_CONFIG_DIR": str(home), "PYTHONPATH": str(SOURCE)}
    init = [
        sys.executable,
        "-m",
        "node.cli",
        "init",
        "--coordinator-url",
        url,
        "--register",
        "bench-owner",
        "--name",
        "bench-node",
        "--models",
        "tiny-sd",
        "--catalog",
        f"tiny-sd={model}@stable_diffusion_1",
        "--pop-wait",
        str(POP_WAIT),
        "--device",
        "cpu",
    ]
    subprocess.run(init, env=env, check=True, capture_output=True, timeout=120)
    return env


def one_stop(env: dict[str, str], idle: float) -> float:
    """Seconds from SIGTERM to exit of a node that has idled `idle` seconds after it began serving."""
    node = subprocess.Popen(
        [sys.executable, "-m", "node.cli", "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert node.stdout is not None
    try:
        for line in node.stdout:
            if "serving tiny-sd" in line:
                break
        else:
            raise RuntimeError(f"the node exited ({node.wait()}) before serving")
        time.sleep(idle)  # inside a long-poll by now: that is the case being measured
        started = time.monotonic()
        node.send_signal(signal.SIGTERM)
        node.wait(POP_WAIT + 30)
        return time.monotonic() - started
    finally:
        if node.poll() is None:
            os.killpg(node.pid, signal.SIGKILL)
            node.wait()


def main() -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--idle", type=float, default=3.0, help="seconds the node idles before SIGTERM")
    args = parser.parse_args()
    runs = 1 if args.short else args.runs
    report = Report("node_stop", {"runs": runs, "idle_seconds": args.idle, "pop_wait": POP_WAIT})
    with temporary_dir(args.keep, "bench-node-stop-") as scratch:
        coordinator = Coordinator(scratch / "coordinator").start()
        try:
            env = init_node(scratch / "node", coordinator.url, tiny_model())
            seconds = [one_stop(env, args.idle) for _ in range(runs)]
        finally:
            coordinator.stop()
    figures = summary(seconds)
    report.results = {"stop_ms": figures}
    report.tables.append(table("idle node: SIGTERM → exit (ms)", list(figures), [list(figures.values())]))
    if args.short and max(seconds) > SHORT_LIMIT_SECONDS:
        report.problems.append(f"an idle node took {max(seconds):.1f} s to stop (limit {SHORT_LIMIT_SECONDS} s)")
    return report.emit(args.json)


if __name__ == "__main__":
    sys.exit(main())
