"""Shared pieces of the security tests: a tiny checkpoint, synthetic pose frames, a test PKI
(CA, server certificates, one expired) made with ``cryptography``, a real TLS terminator
(Debian's stunnel4) in front of the embedded tansu broker, and a way to run the `run`
service without its pose model."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from detector.pose import Person, PoseFrame
from pipelines.broker import EmbeddedBroker, free_port, wait_for_port
from tests.conftest import tiny_checkpoint as tiny_checkpoint  # shared

TOPIC = "posewatch.alerts"


# -- a model and poses ---------------------------------------------------------------------
def walking_frames(camera: str = "gate", n: int = 40) -> list[PoseFrame]:
    """``n`` frames at 10 fps of two persons walking right (tracks 1 and 2)."""
    rng = np.random.default_rng(7)
    base = np.stack([np.linspace(-20, 20, 17), np.linspace(-80, 80, 17)], -1)
    frames = []
    for t in range(n):
        persons = []
        for tid, x0 in ((1, 100.0), (2, 600.0)):
            kp = np.empty((17, 3), np.float32)
            kp[:, :2] = base + np.array([x0 + 2.0 * t, 400.0]) + rng.normal(0, 0.5, (17, 2))
            kp[:, 2] = 0.9
            box = np.r_[kp[:, :2].min(0) - 5, kp[:, :2].max(0) + 5].astype(np.float32)
            persons.append(Person(tid, box, 0.9, kp))
        frames.append(PoseFrame(camera, t, t / 10.0, (1280, 720), persons))
    return frames


def service_config(tmp: Path, ckpt: Path, **sections: Any) -> dict[str, Any]:
    """A `run` configuration (one camera ``gate``) where every person alerts at once; each
    keyword replaces or extends a section."""
    cfg: dict[str, Any] = {
        "cameras": {"gate": {"source": str(tmp / "gate.mp4")}},
        "forecaster": {"checkpoint": str(ckpt), "samples": 8, "stride": 2},
        "alerting": {
            "threshold": -1e6,
            "min_duration_s": 0.2,
            "update_interval_s": 1.0,
            "cooldown_s": 0.5,
        },
        "metrics": {"enabled": False},
        "outputs": {"alerts_jsonl": str(tmp / "alerts.jsonl")},
    }
    from pipelines.config import PosewatchConfig

    if "ui" in PosewatchConfig.model_fields:  # the operator's web view: not needed here
        cfg["ui"] = {"enabled": False}
    for name, section in sections.items():
        cfg[name] = {**cfg.get(name, {}), **section}
    return cfg


def start_service(service: Any, skip: Iterable[str] = ("init_detector", "init_cameras")) -> None:
    """Run a service's start-up steps except ``skip`` (by default the pose model and the
    cameras: the tests feed pose frames themselves through ``handle_poses``)."""
    for step in service.start_steps():
        if getattr(step, "__name__", "") not in set(skip):
            step()


def metric(body: str, name: str) -> float:
    """The value of an unlabelled sample in a Prometheus exposition (0 when absent)."""
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


# -- certificates ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Pki:
    """PEM files: the CA, another CA, a server certificate for 127.0.0.1 / localhost signed
    by the CA (with its key), and one that expired two days ago."""

    ca: Path
    other_ca: Path
    server: Path
    expired: Path


def make_pki(folder: Path) -> Pki:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def ca(cn: str) -> tuple[Any, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return key, cert

    def server(
        ca_key: Any, ca_cert: x509.Certificate, start: dt.datetime, end: dt.datetime
    ) -> bytes:
        key = ec.generate_private_key(ec.SECP256R1())
        san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        cert = (
            x509.CertificateBuilder()
            .subject_name(name("localhost"))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = ca("posewatch test CA")
    _, other = ca("some other CA")
    pki = Pki(folder / "ca.pem", folder / "other-ca.pem", folder / "server.pem",
              folder / "expired.pem")  # fmt: skip
    pki.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.other_ca.write_bytes(other.public_bytes(serialization.Encoding.PEM))
    pki.server.write_bytes(server(ca_key, ca_cert, now - dt.timedelta(days=1),
                                  now + dt.timedelta(days=10)))  # fmt: skip
    pki.expired.write_bytes(server(ca_key, ca_cert, now - dt.timedelta(days=30),
                                   now - dt.timedelta(days=2)))  # fmt: skip
    for p in (pki.server, pki.expired):
        p.chmod(0o600)
    return pki


# -- a TLS terminator in front of the broker ---------------------------------------------------
def stunnel_binary() -> str:
    """Debian's stunnel (package stunnel4, installed by `make test`); skip (fail in CI)."""
    exe = shutil.which("stunnel4") or shutil.which("stunnel")
    if exe is None:
        msg = "stunnel not found: `apt-get install stunnel4` (make test installs it)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return exe


class TlsBroker:
    """The embedded tansu broker behind stunnel: clients speak TLS to ``bootstrap``
    (127.0.0.1:tls_port), which the broker advertises; stunnel forwards to tansu's plain
    port. :meth:`serve` (re)starts stunnel with a given server certificate."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.exe = stunnel_binary()
        self.tls_port = free_port()
        self.broker = EmbeddedBroker(advertised_port=self.tls_port)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.tls_port}"

    def start(self, cert: Path) -> TlsBroker:
        self.broker.start()
        self.serve(cert)
        return self

    def serve(self, cert: Path) -> None:
        """(Re)start the TLS terminator with ``cert`` (PEM certificate + key)."""
        self.stop_tls()
        conf = self.folder / "stunnel.conf"
        conf.write_text(
            "foreground = yes\n"
            "pid =\n"
            f"output = {self.folder / 'stunnel.log'}\n"
            "[kafka]\n"
            f"accept = 127.0.0.1:{self.tls_port}\n"
            f"connect = 127.0.0.1:{self.broker.port}\n"
            f"cert = {cert}\n"
        )
        self.proc = subprocess.Popen(
            [self.exe, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if not wait_for_port("127.0.0.1", self.tls_port, 15):
            log = (self.folder / "stunnel.log").read_text(errors="replace")[-2000:]
            self.stop()
            raise RuntimeError(f"stunnel did not open {self.bootstrap}: {log}")

    def stop_tls(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None
            deadline = time.monotonic() + 5  # the port is free again before a restart
            while time.monotonic() < deadline and wait_for_port("127.0.0.1", self.tls_port, 0.1):
                time.sleep(0.05)

    def stop(self) -> None:
        self.stop_tls()
        self.broker.stop()

    def __enter__(self) -> TlsBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def ssl_client(cafile: Path) -> dict[str, Any]:
    return {"security_protocol": "SSL", "ssl_cafile": str(cafile)}


def create_topic(bootstrap: str, client: dict[str, Any], topic: str = TOPIC) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000, **client)
    try:
        admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        admin.close()


def read_topic(
    bootstrap: str, client: dict[str, Any], expect: int, timeout: float = 30.0, topic: str = TOPIC
) -> list[tuple[str, bytes]]:
    """``(key, value)`` of the topic's records from its beginning (``expect`` or what came)."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(
        bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
        **client,
    )  # fmt: skip
    tp = TopicPartition(topic, 0)
    c.assign([tp])
    c.seek_to_beginning(tp)
    out: list[tuple[str, bytes]] = []
    deadline = time.monotonic() + timeout
    while len(out) < expect and time.monotonic() < deadline:
        for recs in c.poll(timeout_ms=500).values():
            out.extend((r.key.decode(), r.value) for r in recs)
    c.close()
    return out
