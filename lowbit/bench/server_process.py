"""Run `lowbit serve ARTIFACT` as a child process for a benchmark: a free loopback port, wait for /health,
stop it afterwards (SIGTERM, then SIGKILL after a grace period). Its output goes to a log file whose tail is
quoted when it dies before answering.

    with served(artifact, ["--schedule", "nano"], log_path="serve-nano.log") as server:
        ... server.url ...
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

LOG_TAIL_LINES = 30


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it; a tiny race with other processes remains)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    url: str
    cmd: tuple[str, ...]
    log_path: Path

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def serve_command(artifact: str | Path, host: str, port: int, args: Sequence[str]) -> tuple[str, ...]:
    """The command line of `lowbit serve` in this interpreter (so the venv and the checkout are the same)."""
    return (sys.executable, "-m", "lowbit.cli", "serve", str(artifact), "--host", host, "--port", str(port), *args)


def wait_healthy(server: ServerProcess, timeout_s: float) -> None:
    """Poll GET /health until 200; RuntimeError (with the log's tail) if the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=server.url, timeout=2.0, trust_env=False) as client:
        while True:
            rc = server.proc.poll()
            if rc is not None:
                raise RuntimeError(
                    f"lowbit serve exited with code {rc} before /health answered ({' '.join(server.cmd)}); "
                    f"last lines of {server.log_path}:\n{server.log_tail()}"
                )
            try:
                if client.get("/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"lowbit serve did not answer /health within {timeout_s:.0f} s (raise --server-timeout); "
                    f"last lines of {server.log_path}:\n{server.log_tail()}"
                )
            time.sleep(0.25)


def start_server(
    artifact: str | Path,
    args: Sequence[str] = (),
    *,
    log_path: str | Path,
    host: str = "127.0.0.1",
    startup_timeout_s: float = 600.0,
    env: dict[str, str] | None = None,
) -> ServerProcess:
    port = free_port(host)
    cmd = serve_command(artifact, host, port, args)
    log = Path(log_path)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as f:  # the child keeps its own descriptor
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    server = ServerProcess(proc, f"http://{host}:{port}", cmd, log)
    try:
        wait_healthy(server, startup_timeout_s)
    except BaseException:
        stop_server(server)
        raise
    return server


def stop_server(server: ServerProcess, grace_s: float = 30.0) -> int | None:
    """SIGTERM (uvicorn shuts down gracefully), SIGKILL after `grace_s`; the exit code."""
    if server.proc.poll() is None:
        server.proc.terminate()
        try:
            server.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()
    return server.proc.returncode


@contextlib.contextmanager
def served(
    artifact: str | Path,
    args: Sequence[str] = (),
    *,
    log_path: str | Path,
    startup_timeout_s: float = 600.0,
    env: dict[str, str] | None = None,
) -> Iterator[ServerProcess]:
    server = start_server(artifact, args, log_path=log_path, startup_timeout_s=startup_timeout_s, env=env)
    try:
        yield server
    finally:
        stop_server(server)


__all__ = ["ServerProcess", "free_port", "serve_command", "served", "start_server", "stop_server", "wait_healthy"]
