"""Kafka client settings from the configuration, and topic creation."""

from __future__ import annotations

import time
from typing import Any

from pipelines.config import PosewatchConfig


def kafka_client_config(cfg: PosewatchConfig) -> dict[str, Any]:
    """kafka-python security settings (SASL / SSL) from the configuration."""
    k = cfg.kafka
    out: dict[str, Any] = {"security_protocol": k.security_protocol}
    if k.sasl_mechanism:
        out["sasl_mechanism"] = k.sasl_mechanism
        out["sasl_plain_username"] = k.sasl_username
        out["sasl_plain_password"] = k.sasl_password.get_secret_value() if k.sasl_password else None
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        v = getattr(k, name)
        if v is not None:
            out[name] = str(v)
    return out


def ensure_topic(bootstrap: str, topic: str, partitions: int = 1, timeout: float = 20.0) -> None:
    """Create ``topic`` if it does not exist (retrying while the broker starts).

    Raises:
        Exception: kafka-python's error when the broker is still unreachable after
            ``timeout`` seconds.
    """
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    deadline = time.monotonic() + timeout
    while True:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
            try:
                if topic not in admin.list_topics():
                    admin.create_topics([NewTopic(topic, partitions, 1)])
            except TopicAlreadyExistsError:
                pass
            finally:
                admin.close()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


__all__ = ["ensure_topic", "kafka_client_config"]
