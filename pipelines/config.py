"""Service configuration: one YAML file plus environment overrides (pydantic v2).

Every model forbids unknown keys and gives every field a title and a description (the JSON
Schema of ``posewatch config schema`` is the reference). Cameras are a mapping
``name -> camera``. Secrets are written as ``${ENV_VAR}`` placeholders or ``file:/path``
references, resolved at load time, kept as ``SecretStr`` and never logged. Environment
variables override the file: ``POSEWATCH_KAFKA__TOPIC=x`` sets ``kafka.topic``.

Example:
    >>> cfg = PosewatchConfig.model_validate({"cameras": {"gate": {"source": "gate.mp4"}}})
    >>> cfg.cameras["gate"].enabled, cfg.kafka.topic
    (True, 'posewatch.alerts')
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from detector.pose import CAMERA_NAME, MAX_FPS, MIN_FPS
from detector.pose_model import BackendName
from detector.redaction import MASK, SECRET_NAME, redact, register_secrets
from detector.tracking import TrackerName
from forecasting.defaults import (
    ALERT_MIN_DURATION_S,
    DEFAULT_SAMPLER,
    DEFAULT_SAMPLES,
    ScorerName,
)

ENV_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ConfigError(ValueError):
    """Invalid configuration; ``problems`` lists ``(field path, message)`` pairs."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: {len(problems)} configuration error(s)"]
        lines += [f"  {path}: {msg}" for path, msg in problems]
        super().__init__("\n".join(lines))


class Base(BaseModel):
    """Shared base: unknown keys are errors, values are validated on assignment, numbers
    are finite (a NaN threshold would never alert)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class CameraConfig(Base):
    source: str = Field(
        title="Source",
        description="Video file, rtsp:// or http(s):// URL, webcam index, or folder of images. "
        "Credentials in URLs are never logged; use ${ENV} placeholders for them.",
    )
    enabled: bool = Field(True, title="Enabled", description="Read and analyse this camera.")
    fps: float | None = Field(
        None,
        ge=MIN_FPS,
        le=MAX_FPS,
        title="Frame rate",
        description="Frames per second; default: the source's own.",
    )
    detect_fps: float | None = Field(
        None,
        ge=MIN_FPS,
        le=MAX_FPS,
        title="Detection rate",
        description="Frames per second run through pose detection at most (Frigate's "
        "detect.fps); a faster camera's other frames are decoded and skipped (counted in "
        "posewatch_frames_skipped_total), and scoring sees a camera at this rate. Set it to "
        "the model's rate (30 for AIHub2 models) on faster cameras; below the slowest rate "
        "the model scores, its persons are never scored (logged). Default: every frame.",
    )
    roi: tuple[int, int, int, int] | None = Field(
        None,
        title="Region of interest",
        description="x1, y1, x2, y2 in pixels; people whose box centre lies outside are ignored.",
    )
    pace: bool = Field(
        False,
        title="Pace files",
        description="Play video files at their frame rate, like a camera.",
    )
    loop: bool = Field(False, title="Loop files", description="Restart video files at their end.")
    queue_frames: int = Field(
        10,
        ge=1,
        le=300,
        title="Frame queue",
        description="Decoded frames waiting for detection; beyond it the oldest are dropped "
        "(counted). About a second of video absorbs bursts without growing latency.",
    )
    no_frame_timeout: float = Field(
        10.0,
        gt=0,
        title="No-frame timeout",
        description="Seconds without a frame before reconnecting.",
    )
    retry_interval: float = Field(
        2.0,
        gt=0,
        title="Retry interval",
        description="First wait (s) before reconnecting; doubles.",
    )
    max_backoff: float = Field(
        30.0,
        gt=0,
        title="Maximum backoff",
        description="Longest wait (s) between reconnect attempts.",
    )

    @model_validator(mode="after")
    def verify_roi(self) -> CameraConfig:
        if self.roi is not None:
            x1, y1, x2, y2 = self.roi
            if x2 <= x1 or y2 <= y1:
                raise ValueError("roi must be x1, y1, x2, y2 with x2 > x1 and y2 > y1")
        return self


class DetectorConfig(Base):
    weights: str | None = Field(
        None, title="Weights", description="YOLO-pose weights path or name; default yolo11n-pose."
    )
    imgsz: int = Field(
        1088, ge=32, le=4096, title="Image size", description="Inference size (long side)."
    )
    backend: BackendName = Field(
        "auto", title="Backend", description="auto: OpenVINO on CPU, torch on CUDA."
    )
    device: str | None = Field(
        None, title="Device", description="cpu, cuda:0, ...; default automatic."
    )
    conf: float = Field(
        0.1, gt=0, lt=1, title="Detection confidence", description="Minimum detection score."
    )
    batch_size: int = Field(
        4, ge=1, le=64, title="Batch size", description="Most frames per inference call."
    )
    batch_timeout_ms: float = Field(
        20.0, ge=0, title="Batch timeout", description="Longest wait (ms) for a batch to fill."
    )
    tracker: TrackerName = Field("bytetrack", title="Tracker", description="Per-camera tracker.")


class ForecasterConfig(Base):
    checkpoint: Path | None = Field(
        None,
        title="Checkpoint",
        description="Model from `posewatch train`; none: learn each scene first (cold start).",
    )
    samples: int = Field(
        DEFAULT_SAMPLES,
        ge=1,
        le=512,
        title="Samples (K)",
        description="Futures drawn per person (split across the members of an ensemble).",
    )
    sampler: str = Field(
        DEFAULT_SAMPLER,
        title="Sampler",
        description="default (the checkpoint's own: GRU-SNF at temperature 0.8 for a model "
        "trained now, the one "
        "`posewatch calibrate` and cold start calibrate with), gru-nf, gru-snf, or any name of "
        "`forecast-eval`; any of them with a -t<T> suffix (e.g. default-t0.6) draws at "
        "temperature T (below 1: sharper sets of futures). A threshold is only served with "
        "the sampler and K it was calibrated for.",
    )
    seeding: Literal["frame", "batch"] = Field(
        "frame",
        title="Seeding",
        description="frame: each camera frame's persons are scored with a seed drawn from "
        "(camera, frame index), so `run` and `score` give identical scores and alert ids for "
        "the same poses (one model call per frame); batch: frames of every camera share one "
        "model call and one seed (more throughput with many cameras, not reproducible).",
    )
    scorer: Literal["auto"] | ScorerName = Field(
        "auto",
        title="Scorer",
        description="How windows are scored. auto (default): fused (motion + posture + "
        "stillness) for a checkpoint with posture flows (`posewatch train` adds them; "
        "`posewatch posture` adds them to an older checkpoint), minhde (motion) otherwise. "
        "A threshold is only served with the scorer it was calibrated for.",
    )
    stride: int = Field(
        3, ge=1, title="Stride", description="Score every n-th frame of a track (cost control)."
    )
    smoothing_sigma: float = Field(
        6.0, ge=0, title="Smoothing", description="Causal Gaussian smoothing of scores, frames."
    )
    batch: int = Field(256, ge=1, title="Batch", description="Most person windows per model call.")
    early_stop_margin: Annotated[float, Field(ge=0)] | Literal["auto"] | None = Field(
        "auto",
        title="Early stop margin",
        description="A person window whose score from the first ensemble member's futures "
        "(then three members') is already this far below the alert threshold, in the "
        "scorer's units, is not drawn further: its score is that upper bound of the full "
        "score (most windows are normal; only those near the threshold need all K futures). "
        "auto: the scorer's own (minhde, minfde, minade: 1.5 log error; fused: 3.0). "
        "null: draw all K for every window.",
    )
    exact: bool = Field(
        False,
        title="Exact path",
        description="Draw futures member by member (the path before the batched ensemble "
        "call, kept for comparison; same scores, slower) and never stop early.",
    )
    threads: int | None = Field(
        None,
        ge=1,
        title="Threads",
        description="torch threads of the process (default: all cores); 1 when several "
        "`posewatch score` members share a machine (scale by processes, one core each).",
    )


class AlertingConfig(Base):
    threshold: float | None = Field(
        None,
        title="Threshold",
        description="Score threshold; default: the checkpoint's calibration.",
    )
    target_false_alerts_per_hour: float = Field(
        1.0, gt=0, title="Target false alerts", description="Per camera-hour, for calibration."
    )
    min_duration_s: float = Field(
        ALERT_MIN_DURATION_S,
        ge=0,
        title="Minimum duration",
        description="Seconds above threshold before `new`.",
    )
    hysteresis: float = Field(
        0.0, ge=0, title="Hysteresis", description="An episode ends below threshold minus this."
    )
    update_interval_s: float = Field(
        5.0,
        gt=0,
        title="Update interval",
        description="At most one `update` per episode this often.",
    )
    cooldown_s: float = Field(
        10.0,
        ge=0,
        title="Cool-down",
        description="Seconds after `end` before the same person may alert.",
    )
    top_joints: int = Field(
        3, ge=1, le=17, title="Top joints", description="Joints named in an alert."
    )


class KafkaConfig(Base):
    bootstrap_servers: list[str] = Field(
        default_factory=list,
        title="Bootstrap servers",
        description="host:port list; empty: start the embedded broker on 127.0.0.1.",
    )
    topic: str = Field("posewatch.alerts", min_length=1, title="Topic", description="Alert topic.")
    poses_topic: str = Field(
        "posewatch.poses",
        min_length=1,
        title="Poses topic",
        description="PoseFrame topic (split services).",
    )
    client_id: str = Field("posewatch", title="Client id", description="Kafka client id.")
    score_group: str = Field(
        "posewatch-score",
        min_length=1,
        title="Score group",
        description="Consumer group of `posewatch score` members.",
    )
    dead_letter_topic: str = Field(
        "posewatch.poses.dlq",
        min_length=1,
        title="Dead-letter topic",
        description="Where malformed pose messages go, with the reason in an `error` header.",
    )
    max_cameras: int = Field(
        1000,
        ge=1,
        title="Most cameras",
        description="Distinct cameras a `posewatch score` member accepts (each camera is a "
        "metric label series and keeps buffers); messages of further cameras go to the "
        "dead-letter topic.",
    )
    max_poll_records: int = Field(
        200, ge=1, title="Max poll records", description="Most pose messages per poll."
    )
    session_timeout_s: float = Field(
        10.0,
        ge=1,
        title="Session timeout",
        description="A score member silent this long is declared dead and its partitions move.",
    )
    ack_timeout_s: float = Field(
        10.0,
        gt=0,
        title="Acknowledgement timeout",
        description="Longest wait for alert acknowledgements before a commit is postponed.",
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", title="Security protocol", description="Kafka security protocol."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, title="SASL mechanism", description="SASL mechanism when SASL is used."
    )
    sasl_username: str | None = Field(None, title="SASL user", description="SASL user name.")
    sasl_password: SecretStr | None = Field(
        None, title="SASL password", description="Use ${ENV} or file:/path; never logged."
    )
    ssl_cafile: Path | None = Field(None, title="CA file", description="CA certificate (SSL).")
    ssl_certfile: Path | None = Field(
        None, title="Certificate", description="Client certificate (SSL)."
    )
    ssl_keyfile: Path | None = Field(None, title="Key", description="Client key (SSL).")
    spool_dir: Path = Field(
        Path("spool"),
        title="Spool folder",
        description="Alerts wait here on disk while the broker is down.",
    )
    spool_max_mb: float = Field(
        256.0,
        gt=0,
        title="Spool limit",
        description="Spool size (MB) beyond which the oldest alerts go.",
    )

    @model_validator(mode="after")
    def verify_sasl(self) -> KafkaConfig:
        if self.security_protocol.startswith("SASL") and (
            self.sasl_mechanism is None or self.sasl_username is None or self.sasl_password is None
        ):
            raise ValueError("SASL needs sasl_mechanism, sasl_username and sasl_password")
        return self


class MetricsConfig(Base):
    enabled: bool = Field(True, title="Enabled", description="Serve Prometheus metrics.")
    host: str = Field("127.0.0.1", title="Bind address", description="Address of /metrics.")
    port: int = Field(
        9108, ge=0, le=65535, title="Port", description="Port of /metrics (0: any free)."
    )


class OutputsConfig(Base):
    alerts_jsonl: Path | None = Field(
        Path("runs/alerts.jsonl"), title="Alerts file", description="Every alert as a JSON line."
    )
    annotated_video: Path | None = Field(
        None,
        title="Annotated video",
        description="Folder for one MP4 per camera with skeletons and scores (on a blank "
        "canvas in `posewatch score`).",
    )
    scores_jsonl: Path | None = Field(
        None,
        title="Scores JSONL",
        description="Append every person score (camera, track, frame, raw and smoothed) as a "
        "JSON line (`run` and `score`).",
    )
    snapshots: Path | None = Field(
        None,
        title="Snapshots",
        description="Folder for one JPEG per `new` alert with the skeleton drawn (on a blank "
        "canvas in `posewatch score`, which has no images).",
    )
    store: Path | None = Field(
        None,
        title="Alert store",
        description="SQLite file of every alert event and operator verdict (the history the "
        "web view and `posewatch alerts` read); default: alerts.db beside alerts_jsonl (or "
        "runs/alerts.db). Set to null to keep no history.",
    )
    privacy: Literal["off", "skeletons_only"] = Field(
        "off",
        title="Privacy",
        description="skeletons_only: no image of a person leaves the process: snapshots, "
        "annotated video, the alert store and the web view show skeletons on an empty "
        "background (detection itself needs no picture of anyone).",
    )

    @model_validator(mode="before")
    @classmethod
    def default_store(cls, data: Any) -> Any:
        """``store`` defaults into the run's output folder (that of ``alerts_jsonl``)."""
        if isinstance(data, dict) and "store" not in data:
            jsonl = data.get("alerts_jsonl", Path("runs/alerts.jsonl"))
            folder = Path(jsonl).parent if jsonl is not None else Path("runs")
            data = {**data, "store": folder / "alerts.db"}
        return data


class UiConfig(Base):
    enabled: bool = Field(
        True,
        title="Enabled",
        description="Serve the operator's web view (cameras, alerts, verdicts) from "
        "`posewatch run` (and `posewatch ui`).",
    )
    host: str = Field(
        "127.0.0.1",
        title="Bind address",
        description="Address of the web view; 127.0.0.1 keeps it on this machine (it has "
        "no login: put a reverse proxy with authentication in front to share it).",
    )
    port: int = Field(
        8108, ge=0, le=65535, title="Port", description="Port of the web view (0: any free)."
    )
    public_url: str | None = Field(
        None,
        title="Public URL",
        description="Base URL of the web view as subscribers reach it, used in the alerts' "
        "snapshot links; default http://<host>:<port>.",
    )
    max_fps: float = Field(
        4.0,
        gt=0,
        le=30,
        title="Live frame rate",
        description="Most live images per second and camera sent to viewers (each is drawn "
        "and JPEG-encoded only while someone watches).",
    )
    max_width: int = Field(
        960,
        ge=64,
        le=4096,
        title="Live image width",
        description="Live images wider than this are scaled down before encoding.",
    )


class ColdStartConfig(Base):
    learn_minutes: float = Field(
        10.0,
        gt=0,
        title="Learning time",
        description="Minutes of a camera's footage to learn from (video time) before training "
        "(AIHub2, 3 seeds: 10 minutes give 92.6 ± 0.7 AUC, 3 minutes 71.5 ± 7.1, 45 s 46.1 ± "
        "12.4, below chance: a shorter time starts alerting sooner, with far more false alerts).",
    )
    holdout: float = Field(
        0.25,
        gt=0,
        lt=1,
        title="Held-out share",
        description="Last share of the learned footage kept for validation and calibration.",
    )
    epochs: int = Field(
        15, ge=1, title="Epochs", description="Most training epochs on the learned footage."
    )
    max_train_minutes: float = Field(
        10.0,
        gt=0,
        title="Training time limit",
        description="Stop training the scene model's members (each after its share), then "
        "its posture flows, after this long (the first posture flow is always trained).",
    )
    members: int = Field(
        3,
        ge=1,
        title="Scene-model members",
        description="Scene models trained from different seeds and served as one ensemble "
        "(steadier than one: 10 minutes of AIHub2 footage give 92.6 ± 0.7 AUC with 3 and a "
        "10-minute limit, 91.4 ± 3.1 with 1 and 5 minutes); each stops after its share of the "
        "training time limit.",
    )
    posture_flows: int = Field(
        4,
        ge=0,
        title="Posture flows",
        description="Posture flows trained after the scene model, within the training time "
        "limit (at least one): the default scorer (fused: motion + posture + stillness) needs "
        "them; 0 trains none and the camera is scored by motion alone (minhde).",
    )
    hidden: int = Field(
        128,
        ge=8,
        title="GRU width",
        description="Width of the scene model (smaller trains faster).",
    )
    flow_layers: int = Field(
        4, ge=1, title="Flow layers", description="Coupling layers of the scene model."
    )
    save_dir: Path | None = Field(
        None,
        title="Save directory",
        description="Learned models are saved here as <camera>.pt and reused at the next start.",
    )
    target_false_alerts_per_hour: float | None = Field(
        None,
        gt=0,
        title="Target false alerts",
        description="Calibration target after learning; default: alerting's target.",
    )


class PosewatchConfig(BaseSettings):
    """The whole service configuration."""

    model_config = SettingsConfigDict(
        extra="forbid",
        env_prefix="POSEWATCH_",
        env_nested_delimiter="__",
        validate_assignment=True,
        allow_inf_nan=False,
    )

    cameras: dict[str, CameraConfig] = Field(
        title="Cameras", description="Camera name -> camera. Names appear in alerts and metrics."
    )
    detector: DetectorConfig = Field(
        default_factory=DetectorConfig, title="Detector", description="Pose model and tracking."
    )
    forecaster: ForecasterConfig = Field(
        default_factory=ForecasterConfig, title="Forecaster", description="Forecasting and scoring."
    )
    alerting: AlertingConfig = Field(
        default_factory=AlertingConfig, title="Alerting", description="Alert episodes."
    )
    kafka: KafkaConfig = Field(
        default_factory=KafkaConfig, title="Kafka", description="Alert delivery."
    )
    metrics: MetricsConfig = Field(
        default_factory=MetricsConfig, title="Metrics", description="Prometheus endpoint."
    )
    outputs: OutputsConfig = Field(
        default_factory=OutputsConfig, title="Outputs", description="Files written besides Kafka."
    )
    cold_start: ColdStartConfig = Field(
        default_factory=ColdStartConfig,
        title="Cold start",
        description="Learning a scene without a model.",
    )
    ui: UiConfig = Field(
        default_factory=UiConfig, title="Web view", description="The operator's web page."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment variables override the file.
        return env_settings, init_settings

    @model_validator(mode="after")
    def verify_cameras(self) -> PosewatchConfig:
        if not self.cameras:
            raise ValueError("at least one camera is needed")
        for name in self.cameras:
            if not CAMERA_NAME.fullmatch(name):
                raise ValueError(
                    f"camera name {name!r}: use letters, digits, '_', '.', '-' (max 64; not "
                    "'.' or '..')"
                )
        return self


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a key twice in one mapping (two cameras of one name
    would otherwise be one, the last winning)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} appears twice in one mapping (line "
                    f"{key_node.start_mark.line + 1}); each name must be unique",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def resolve_secrets(value: Any, where: str = "", found: set[str] | None = None) -> Any:
    """Replace ``${ENV}`` placeholders and ``file:/path`` strings (recursively).

    Arguments:
        value: the parsed configuration (or any part of it).
        where: field path of ``value`` (for error messages).
        found: when given, every value that came from an environment variable or a file is
            added to it (so error messages can be scrubbed of them).

    Raises:
        ConfigError: a secret file cannot be read, or a variable is not set (the message
            names the field, the file or the variable, never a value).
    """
    if isinstance(value, dict):
        return {
            k: resolve_secrets(v, f"{where}.{k}" if where else str(k), found)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [resolve_secrets(v, f"{where}[{i}]", found) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value
    if value.startswith("file:") and not value.startswith("file://"):  # file:// is a URL
        try:
            path = Path(value[5:]).expanduser()
        except RuntimeError:  # ~user that does not exist
            raise ConfigError(
                "config", [(where, "cannot expand '~' in the secret file's path: give it whole")]
            ) from None
        try:
            secret = path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(
                "config", [(where, f"cannot read secret file {path} ({why})")]
            ) from None
        if found is not None:
            found.add(secret)
        return secret

    def sub(m: re.Match[str]) -> str:
        var = m.group(1)
        if var not in os.environ:
            raise ConfigError("config", [(where, f"environment variable {var} is not set")])
        if found is not None:
            found.add(os.environ[var])
        return os.environ[var]

    return ENV_PLACEHOLDER.sub(sub, value)


def _inline_secrets(value: Any, name: str = "") -> set[str]:
    """String values written in the file under secret-looking names (``sasl_password``,
    ``token``, ...) and the sources of cameras (URLs that may hold credentials)."""
    if isinstance(value, dict):
        out: set[str] = set()
        for k, v in value.items():
            out |= _inline_secrets(v, str(k))
        return out
    if isinstance(value, list):
        return set().union(*(_inline_secrets(v, name) for v in value)) if value else set()
    if isinstance(value, str) and (SECRET_NAME.search(name) or redact(value) != value):
        return {value}
    return set()


def _url_strings(value: Any) -> set[str]:
    """Every string in ``value`` (recursively) that holds a URL (``scheme://``)."""
    if isinstance(value, dict):
        return set().union(set(), *(_url_strings(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(set(), *(_url_strings(v) for v in value))
    return {value} if isinstance(value, str) and "://" in value else set()


def environment_secrets(environ: dict[str, str] | None = None) -> set[str]:
    """Values of ``POSEWATCH_*`` variables that may hold a secret (they are a way to give
    one, like ``${ENV}``): the whole value of a variable with a secret-looking name
    (``..._SASL_PASSWORD``) or naming a camera's ``SOURCE``, every URL (``scheme://``: a
    token may sit in its path, which no pattern recognises), and in a JSON value the strings
    under secret-looking names and the URLs. Other values (a port, a topic) are not.

    Example:
        >>> sorted(environment_secrets({"POSEWATCH_CAMERAS__GATE__SOURCE": "rtsp://h/Tk9",
        ...                             "POSEWATCH_METRICS__PORT": "9100"}))
        ['rtsp://h/Tk9']
    """
    out: set[str] = set()
    for name, value in (os.environ if environ is None else environ).items():
        upper = name.upper()
        if not upper.startswith("POSEWATCH_") or not value:
            continue
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        if isinstance(parsed, (bool, int, float)) or parsed is None:
            continue  # a number or a switch (SIGMA matches "sig"): not a secret
        if SECRET_NAME.search(upper[len("POSEWATCH_") :]) or upper.endswith("__SOURCE"):
            out.add(value)
        out |= _url_strings(parsed) | _inline_secrets(parsed)
    return out


def scrub(text: str, secrets: set[str]) -> str:
    """``text`` with credentials in URLs redacted (:func:`detector.redaction.redact`) and
    every known secret value (4 characters or longer) replaced by ``***``.

    Example:
        >>> scrub("bad value S3cret! in rtsp://u:pw@cam/x", {"S3cret!"})
        'bad value *** in rtsp://***@cam/x'
    """
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 4:
            text = text.replace(secret, MASK)
    return redact(text)


#: A quoted fragment of a YAML error message ('...' or "...").
_QUOTED = re.compile(r"'[^']{3,}'|\"[^\"]{3,}\"")


def _yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    """A YAML error as ``line L, column C: problem`` without the offending line (PyYAML
    prints it, secret included); quoted fragments of the problem are hidden too when the
    line looks like it holds a secret (a secret-named key, a URL with credentials)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or type(exc).__name__
    context = getattr(exc, "context", None)
    lines = text.splitlines()
    where = ""
    risky = False
    for m in (mark, getattr(exc, "context_mark", None)):
        if m is not None and 0 <= m.line < len(lines):
            line = lines[m.line]
            risky = risky or bool(SECRET_NAME.search(line)) or redact(line) != line
    if mark is not None:
        where = f"line {mark.line + 1}, column {mark.column + 1}: "
    msg = f"{problem} ({context})" if context else str(problem)
    if risky:
        msg = _QUOTED.sub("'***'", msg)
    return f"not valid YAML at {where}{msg} (the line is not shown: it may hold a secret)"


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    out = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(top level)"
        out.append((path, err["msg"]))
    return out


def load_config(
    path: str | Path | None = None, data: dict[str, Any] | None = None
) -> PosewatchConfig:
    """Load and validate a YAML file (or a dict), with ``${ENV}`` / ``file:`` secrets.

    No error message echoes a secret: YAML errors give the line and column, not the line;
    validation messages are scrubbed of every value that came from a variable or a file,
    of values under secret-looking names and of URL credentials (:func:`scrub`).

    Raises:
        ConfigError: every problem with its field path.
    """
    source = str(path) if path is not None else "config"
    if data is None:
        if path is None:
            raise ConfigError(source, [("(file)", "no configuration file given")])
        p = Path(path)
        if not p.exists():
            raise ConfigError(source, [("(file)", "file does not exist")])
        if not p.is_file():
            raise ConfigError(source, [("(file)", "not a file (a folder?): give the YAML file")])
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                source, [("(file)", f"not UTF-8 text (byte {exc.start}): save it as UTF-8")]
            ) from None
        except OSError as exc:
            raise ConfigError(source, [("(file)", f"cannot read it ({exc.strerror})")]) from None
        try:
            data = yaml.load(text, Loader=_UniqueKeyLoader) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(source, [("(file)", _yaml_problem(exc, text))]) from None
    if not isinstance(data, dict):
        raise ConfigError(source, [("(top level)", "expected a mapping of sections")])
    secrets = _inline_secrets(data) | environment_secrets()
    try:
        resolved = resolve_secrets(data, found=secrets)
    except ConfigError as exc:
        raise ConfigError(source, exc.problems) from None
    register_secrets(secrets)  # hidden from every log line, error and metric from now on
    try:
        return PosewatchConfig(**resolved)
    except ValidationError as exc:
        problems = _problems(exc)
    except SettingsError as exc:  # a POSEWATCH_* variable that is not valid JSON
        problems = [("(environment)", str(exc))]
    raise ConfigError(source, [(scrub(w, secrets), scrub(m, secrets)) for w, m in problems])


def json_schema() -> dict[str, Any]:
    """JSON Schema of the configuration."""
    return PosewatchConfig.model_json_schema()
