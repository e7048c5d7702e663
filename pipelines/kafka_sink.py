"""Alert delivery to Kafka that loses nothing (kafka-python).

Every alert is first appended to a :class:`DiskSpool` (fsync'd), then a sender thread
replays the spool in order to the topic, keyed by camera, with ``acks=all``, retries and one
request in flight (per-camera order is kept). The spool cursor moves only after the broker
acknowledged, so a broker outage or a restart of posewatch loses nothing: alerts wait on
disk and go out, in order, when the broker is back (at-least-once; dedupe by alert id).
Delivery callbacks feed success / failure counters.

When the spool cannot be written (disk full, I/O error) alerts wait in a bounded memory
backlog instead (oldest dropped beyond ``memory_max``, counted), are sent from there while
the broker is up, and move back to the disk spool, in order, once it can be written again.
The failure is logged once per episode and its recovery once. The sender thread never dies:
an unexpected error is logged and the round retried after a backoff.

Example:
    >>> sink = KafkaAlertSink(["127.0.0.1:9092"], "posewatch.alerts", "spool")  # doctest: +SKIP
    >>> sink.publish("gate", b'{"alert_id": "..."}')  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.spool import DiskSpool, SpoolWriteError

log = logging.getLogger(__name__)


class KafkaAlertSink:
    """Spool-backed, ordered, acknowledged delivery of keyed messages to one topic.

    Arguments:
        bootstrap_servers: ``host:port`` list.
        topic: destination topic.
        spool_dir: folder of the durable spool.
        client_id: Kafka client id.
        spool_max_bytes: spool bound.
        producer_config: extra kafka-python producer settings (security, SASL, SSL).
        batch: most messages sent per round.
        retry_backoff_s: first wait after a failed round (doubles up to ``max_backoff_s``).
        on_delivery: called ``(ok: bool, n: int)`` after each round (metrics hook).
        memory_max: most alerts kept in memory while the spool cannot be written.

    Raises:
        SpoolLockedError: another process uses ``spool_dir``.
    """

    def __init__(
        self,
        bootstrap_servers: list[str],
        topic: str,
        spool_dir: str | Path,
        client_id: str = "posewatch",
        spool_max_bytes: int = 256 << 20,
        producer_config: dict[str, Any] | None = None,
        batch: int = 200,
        retry_backoff_s: float = 0.5,
        max_backoff_s: float = 5.0,
        on_delivery: Callable[[bool, int], None] | None = None,
        memory_max: int = 10_000,
    ):
        self.bootstrap_servers = list(bootstrap_servers)
        self.topic = topic
        self.client_id = client_id
        self.spool = DiskSpool(spool_dir, max_bytes=spool_max_bytes)
        self.producer_config = producer_config or {}
        self.batch = batch
        self.retry_backoff_s = retry_backoff_s
        self.max_backoff_s = max_backoff_s
        self.on_delivery = on_delivery
        self.delivered = 0
        self.failed = 0
        self.connected = False
        self._warned = False  # the outage in progress was logged
        self.last_delivery = time.time()  # UNIX time of the last acknowledged round (or start)
        self.memory: deque[tuple[str, bytes]] = deque()  # alerts the spool could not take
        self.memory_max = memory_max
        self.memory_dropped = 0
        self.spool_errors = 0  # failed spool writes
        self._mem_lock = threading.Lock()
        self._mem_sending = False  # a batch of memory-held alerts is being sent
        self._producer: Any = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kafka-sink", daemon=True)
        self._thread.start()

    # -- API --------------------------------------------------------------------------------
    def publish(self, key: str, value: bytes) -> None:
        """Accept one message: durable on disk once this returns, or held in memory while
        the spool cannot be written (never raises for a full disk)."""
        with self._mem_lock:
            self._spool_memory()
            if not self.memory:
                try:
                    self.spool.append(key, value)
                except SpoolWriteError as exc:
                    self._spool_failed(exc)
                else:
                    self._wake.set()
                    return
            if len(self.memory) >= self.memory_max:
                self.memory_dropped += 1
                if self._mem_sending:  # the head is in flight: drop the newest instead
                    return
                self.memory.popleft()
            self.memory.append((key, value))
        self._wake.set()

    def _spool_failed(self, exc: OSError) -> None:
        self.spool_errors += 1
        if not self.memory:  # once per episode
            log.error(
                "kafka: cannot write the alert spool (%s); alerts wait in memory (at most %d) "
                "until it can be written again",
                exc,
                self.memory_max,
            )

    def _spool_memory(self) -> None:
        """Move memory-held alerts to the disk spool, oldest first (caller holds the lock;
        not while some of them are being sent from memory)."""
        if not self.memory or self._mem_sending:
            return
        while self.memory:
            try:
                self.spool.append(*self.memory[0])
            except SpoolWriteError:
                self.spool_errors += 1
                return
            self.memory.popleft()
        log.info("kafka: the alert spool can be written again; memory-held alerts moved to it")

    def delivery_age(self) -> float:
        """Seconds since the last acknowledged delivery while messages are pending (0 when
        nothing waits): how long the broker has been unreachable for them."""
        return max(0.0, time.time() - self.last_delivery) if self.pending() else 0.0

    def pending(self) -> int:
        """Messages accepted but not yet acknowledged by the broker (disk and memory)."""
        return self.spool.pending() + len(self.memory)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until nothing is pending; False if messages remain (they stay spooled)."""
        deadline = time.monotonic() + timeout
        while self.pending() and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.05)
        return self.pending() == 0

    def close(self, timeout: float = 10.0) -> bool:
        """Flush (up to ``timeout``), stop the sender and close the producer."""
        ok = self.flush(timeout)
        self._stop.set()
        self._wake.set()
        # No timeout: a round in progress is bounded (producer start, max_block_ms, flush 10 s),
        # and a sink that returned from close() must never send again.
        self._thread.join()
        self._drop_producer()
        with self._mem_lock:
            self._spool_memory()
            if self.memory:
                log.error(
                    "kafka: %d alerts could be neither delivered nor spooled and are lost at "
                    "exit (the spool folder's disk is full)",
                    len(self.memory),
                )
        self.spool.close()
        return ok

    # -- sender ---------------------------------------------------------------------------------
    def _make_producer(self) -> Any:
        from kafka import KafkaProducer

        from pipelines.kafka_errors import watch_network_errors

        watch_network_errors()  # so a refused TLS handshake / SASL login can be named
        return KafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            client_id=self.client_id,
            acks="all",
            retries=5,
            max_in_flight_requests_per_connection=1,
            linger_ms=5,
            request_timeout_ms=5000,
            max_block_ms=3000,
            bootstrap_timeout_ms=5000,  # a dead broker fails the round in 5 s, not 30
            reconnect_backoff_max_ms=2000,
            **self.producer_config,
        )

    def _drop_producer(self) -> None:
        p = self._producer
        self._producer = None
        if p is not None:
            # Unacknowledged records are still in the spool and will be resent: abort them so
            # the producer closes at once instead of waiting on a dead broker.
            with contextlib.suppress(Exception):  # private API of kafka-python: best effort
                p._accumulator.abort_incomplete_batches()
            with contextlib.suppress(Exception):  # closing a producer of a dead broker may raise
                p.close(timeout=1)
        self.connected = False

    def _run(self) -> None:
        backoff = self.retry_backoff_s
        while not self._stop.is_set():
            try:
                done = self._round()
            except Exception:  # never let the sender die: log, back off, go on
                log.exception("kafka: sender round failed unexpectedly; retrying")
                done = False
            if done is None:  # nothing to send (nothing waits: the delivery age is 0)
                self.last_delivery = time.time()
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            if done:
                backoff = self.retry_backoff_s
                continue
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self.max_backoff_s)

    def _round(self) -> bool | None:
        """Send one batch: from the spool, else the memory-held alerts the spool still
        cannot take (disk full); None when idle."""
        with self._mem_lock:
            self._spool_memory()
        batch, end = self.spool.peek_batch(self.batch)
        if batch:

            def ack(n: int) -> None:  # the whole batch to its end; a prefix by count
                self.spool.ack(n, end if n == len(batch) else None)

            return self._send(batch, ack) == len(batch)
        with self._mem_lock:
            self._spool_memory()  # once more: the spool may have room now
            mem = list(self.memory)[: self.batch]
            self._mem_sending = bool(mem)
        if not mem:
            return None
        try:
            return self._send(mem, self._ack_memory) == len(mem)
        finally:
            with self._mem_lock:
                self._mem_sending = False

    def _ack_memory(self, n: int) -> None:
        # The batch was the memory's head and nothing moved it meanwhile (_mem_sending).
        with self._mem_lock:
            for _ in range(min(n, len(self.memory))):
                self.memory.popleft()

    def _send(self, batch: list[tuple[str, bytes]], ack: Callable[[int], None]) -> int:
        """Send a batch; ``ack`` and return the length of the acknowledged prefix."""
        try:
            if self._producer is None:
                self._producer = self._make_producer()
            if self._stop.is_set():
                return 0
            futures = [self._producer.send(self.topic, key=k.encode(), value=v) for k, v in batch]
            self._producer.flush(timeout=10)
        except Exception as exc:  # broker unreachable, metadata timeout, ...
            self._note_failure(len(batch), exc)
            return 0
        done = 0
        for f in futures:
            if f.is_done and f.succeeded():
                done += 1
            else:
                break
        if done:
            if not self.connected:
                log.info("kafka: connected to %s", ",".join(self.bootstrap_servers))
            self.connected = True
            self.last_delivery = time.time()
            ack(done)
            self.delivered += done
            if self.on_delivery is not None:
                self.on_delivery(True, done)
        if done < len(batch):
            err = (
                futures[done].exception
                if futures[done].is_done
                else TimeoutError("not acknowledged")
            )
            self._note_failure(len(batch) - done, err)
        return done

    def _note_failure(self, n: int, exc: BaseException | None) -> None:
        self.failed += n
        if self.on_delivery is not None:
            self.on_delivery(False, n)
        if self.connected or not self._warned:
            # Once per outage: when a connection is lost, or the first failed round at start.
            from pipelines.kafka_errors import describe_failure

            log.warning(
                "kafka: delivery to %s failed (%s); %d alerts wait in the spool",
                ",".join(self.bootstrap_servers),
                describe_failure(exc, self.producer_config),  # the TLS / SASL error, if any
                self.spool.pending(),
            )
            self._warned = True
        self._drop_producer()
