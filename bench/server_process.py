"""The service under test: ``python -m mimea.service.cli serve`` in its own process, and its
Redis."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "mimea-bench"


class Server:
    """``python -m mimea.service.cli serve`` on a free loopback port, configured by environment,
    from this checkout or from the one at ``root`` (another version, to compare with)."""

    def __init__(self, checkpoint: Path, log: Path, env: dict[str, str], *,
                 startup_s: float = 300, root: Path = ROOT) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.log = log
        full_env = {**os.environ, "PYTHONPATH": str(root), "MIMEA_API_KEY": "",
                    "MIMEA_LOG_LEVEL": "WARNING", "MIMEA_DEVICE": "cpu", **env}
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mimea.service.cli", "serve", "--checkpoint",
                 str(checkpoint), "--port", str(self.port)], cwd=root, env=full_env, stdout=out,
                stderr=subprocess.STDOUT)
        import httpx

        deadline = time.monotonic() + startup_s
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)

    def rss_mb(self) -> float:
        """VmRSS of the server process (psutil is not a dependency)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
        return float("nan")

    def cpu_s(self) -> float:
        """CPU seconds the server process has used (user + system)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> int:
        """Terminate (kill after 30 s) and return the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def flush_namespace(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{NAMESPACE}:*", count=5000))
    for lo in range(0, len(keys), 5000):
        client.delete(*keys[lo:lo + 5000])
    client.close()


def redis_ok(redis_url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(redis_url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False
