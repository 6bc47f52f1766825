"""Real servers for the remote-data tests and bench/loader_speed.py: nginx and moto's S3 server.

Both run as child processes on 127.0.0.1 with a free port and everything under a temp folder
(config, pid, logs); ``stop`` ends them by their own pid, so nothing is left behind.

    with Nginx(root=dataset_parent, workdir=tmp) as web:   # web.url = "http://127.0.0.1:PORT"
        ...                                                 # web.stop(); web.start(): an outage
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from turbo_ds.engine.distributed import free_port

NGINX_INSTALL = "apt-get install -y nginx-light (Debian/Ubuntu); .ci/run installs it"
S3_INSTALL = "pip install -e '.[s3]' 'moto[server]' (requirements.txt pins the tested versions)"


def wait_for_port(port: int, proc: subprocess.Popen, what: str, log: Path | None = None, timeout: float = 30,
                  host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            detail = log.read_text()[-2000:] if log and log.is_file() else ""
            raise RuntimeError(f"{what} exited with status {proc.returncode}: {detail}")
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {host}:{port} within {timeout:g} s")


class Nginx:
    """nginx serving ``root`` at http://HOST:PORT/ (static files, byte ranges; HOST 127.0.0.1 unless given, e.g. the
    host's end of the local multi-node cluster's bridge).

    ``locations`` adds raw ``location`` blocks to the server (e.g. a path that returns 500, a
    rate limit, Basic auth, PUT through the dav module). The port stays the same across
    ``stop``/``start``, so a client sees an outage, not a move.
    """

    def __init__(self, root: Path, workdir: Path, locations: str = "", host: str = "127.0.0.1"):
        if shutil.which("nginx") is None:
            raise RuntimeError(f"nginx is not installed: {NGINX_INSTALL}")
        self.root, self.dir, self.port, self.host = Path(root), Path(workdir), free_port(), host
        self.dir.mkdir(parents=True, exist_ok=True)
        self.url = f"http://{host}:{self.port}"
        # Workers run as root when the master does, so that they can read pytest's 0700 temp folders.
        user = "user root;" if os.geteuid() == 0 else ""
        temp = " ".join(f"{kind}_temp_path {self.dir}/{kind};" for kind in ("client_body", "proxy", "fastcgi",
                                                                             "uwsgi", "scgi"))
        (self.dir / "nginx.conf").write_text(f"""
{user}
daemon off;
worker_processes 1;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {self.dir}/access.log;
    {temp}
    sendfile on;
    server {{
        listen {host}:{self.port};
        root {self.root};
        {locations}
    }}
}}
""")
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Nginx":
        self.proc = subprocess.Popen(["nginx", "-c", str(self.dir / "nginx.conf"), "-p", str(self.dir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.proc, "nginx", self.dir / "error.log", host=self.host)
        return self

    def stop(self) -> None:
        """Fast shutdown (SIGTERM): open connections are cut, new ones refused."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
        self.proc = None

    def workers(self) -> list[int]:
        """PIDs of the worker processes (children of the master)."""
        if self.proc is None:
            return []
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(p) for p in children.read_text().split()] if children.is_file() else []

    def requests(self, path_part: str = "") -> list[str]:
        """Access-log lines (one per request) whose request contains ``path_part``."""
        log = self.dir / "access.log"
        return [line for line in log.read_text().splitlines() if path_part in line] if log.is_file() else []

    def __enter__(self) -> "Nginx":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class MotoS3:
    """moto's standalone S3-compatible server (as s3fs's own tests use); ``env`` points clients at it."""

    def __init__(self, workdir: Path):
        self.port, self.dir = free_port(), Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {"AWS_ENDPOINT_URL": self.url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1"}
        self.proc: subprocess.Popen | None = None

    def start(self) -> "MotoS3":
        log = self.dir / "moto.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=open(log, "ab"), stderr=subprocess.STDOUT)
        wait_for_port(self.port, self.proc, "moto_server", log)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.proc = None

    def __enter__(self) -> "MotoS3":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
