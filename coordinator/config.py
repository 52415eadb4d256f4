"""Coordinator settings. The CLI fills them from flags and `HORDE_*` environment variables."""

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: `rate` requests per second on average, bursts up to `burst`."""

    rate: float
    burst: int


@dataclass(frozen=True)
class ConnectionLimits:
    """What one client address may hold open, and how long a request may take to arrive
    (coordinator/connections.py; the reasons for each default are in docs/security.md)."""

    # Seconds for a request's headers to arrive, from the connection or from the previous answer
    # (so also how long an idle keep-alive connection stays open).
    header_timeout: float = 20.0
    # Seconds for a body to arrive, plus one second per `body_min_rate` bytes it declares.
    body_timeout: float = 20.0
    body_min_rate: int = 64 * 1024
    per_ip: int = 256  # concurrent connections from one address (not applied behind a trusted proxy)
    long_polls_per_ip: int = 128  # concurrent pops and checks from one client address
    total: int = 0  # concurrent connections in all; 0: the open-files limit less a reserve


@dataclass(frozen=True)
class VerificationSettings:
    """Verified work (docs/security.md, "Verified work"): escrowed rewards and spot checks.

    Off in a bare config (rewards are paid at once, nothing is re-run); `horde-coordinator serve` turns
    it on unless told `--no-verification`. The reasons for each number are in docs/security.md."""

    enabled: bool = False
    window: float = 3600.0  # seconds a reward stays held before it is released
    # The chance that a delivered image is re-run by a node of another owner: `new_rate` for a node with
    # fewer than `record` passed checks, falling evenly to `settled_rate` at `record`; `suspect_rate` for a
    # node with a failed check (until `record` more pass).
    new_rate: float = 0.5
    settled_rate: float = 0.04
    suspect_rate: float = 1.0
    record: int = 50
    # A new or suspect node gets a canary (a trusted node's image, asked again of it alone) at most this often.
    canary_interval: float = 600.0
    # An image back in under this share of the time the node's own measured speed needs for it is checked
    # for sure (at `suspect_rate`): the cheats that save work (noise, fewer steps, a copy) arrive early.
    quick_fraction: float = 0.4
    failures_to_suspend: int = 2  # failed checks after which the node is suspended until an operator looks
    # Images compared across hardware classes (or where a class is not deterministic): the most their
    # 16×16 greyscale versions may differ on average, out of 255 (calibrated in bench/verify.py).
    max_distance: float = 3.0


@dataclass
class CoordinatorConfig:
    data_dir: Path = Path("horde-data")
    database: str | None = None  # a SQLite path or a postgresql:// URL; default: data_dir/horde.db
    images_dir: Path | None = None  # default: data_dir/images
    # s3://bucket/prefix: images in an S3-compatible bucket instead of images_dir (the `s3` extra);
    # credentials and region come from the usual AWS_* variables.
    images_bucket: str | None = None
    s3_endpoint_url: str | None = None  # the store's API, when not AWS (MinIO, R2, Garage...)
    s3_public_url: str | None = None  # the store's address in presigned URLs, when clients reach it elsewhere
    public_url: str | None = None  # how clients reach us, for image and upload URLs
    retention_hours: float = 24.0
    request_expiry_seconds: float = 20 * 60
    max_job_faults: int = 3
    max_missed_deadlines: int = 3
    worker_online_seconds: float = 300.0
    uptime_kudos_per_10_minutes: float = 50.0  # 0 switches uptime rewards off
    suspicious_mps_per_second: float = 20.0
    # Wait times come from a simulation of the queue (coordinator/estimates.py), rerun at most this often.
    forecast_seconds: float = 1.0
    # The economy (docs/security.md, "The economy"). Unfunded images (anonymous, or beyond the requester's
    # balance) earn a node at most this much, refilled evenly over 10 minutes: what uptime pays, no more.
    volunteer_kudos_per_10_minutes: float = 50.0
    suspicion_threshold: int = 5  # suspicious results after which a node's rewards are withheld
    concurrency: int = 30  # images an account (or an anonymous address) may have waiting or in progress
    # Networks (CIDR) whose untrusted requests count as from an unsafe IP: nodes that pop with
    # allow_unsafe_ipaddr false never get them (coordinator/preferences.py).
    unsafe_networks: tuple[str, ...] = ()
    max_body_bytes: int = 20 * 1024 * 1024
    # A status answer carries base64 images (`r2: false`) up to this many bytes in all; the rest as URLs.
    max_inline_bytes: int = 2 * 1024 * 1024
    open_registration: bool = True
    registration_limit: RateLimit = field(default_factory=lambda: RateLimit(rate=1 / 60, burst=5))
    rate_limits: dict[str, RateLimit] = field(
        default_factory=lambda: {
            "generate": RateLimit(rate=5, burst=30),
            "pop": RateLimit(rate=20, burst=60),
            "submit": RateLimit(rate=50, burst=100),
        }
    )
    rate_limiting: bool = True
    connection_limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    trust_forwarded_for: bool = False
    # Webhooks (coordinator/webhooks.py): a failing receiver is retried with backoff for this long; and
    # loopback, link-local and private addresses are refused unless the operator allows them.
    webhook_retry_seconds: float = 600.0
    webhook_private_addresses: bool = False
    maintenance_interval: float = 5.0
    verification: VerificationSettings = field(default_factory=VerificationSettings)
    version: str = "0.1.0"

    @property
    def database_url(self) -> str:
        return self.database or str(self.data_dir / "horde.db")

    @property
    def image_root(self) -> Path:
        return self.images_dir or self.data_dir / "images"

    @property
    def key_path(self) -> Path:
        """The coordinator's Ed25519 key. Back it up: it anchors every job and ledger signature."""
        return self.data_dir / "coordinator.key"

    @property
    def secret_path(self) -> Path:
        """A random secret for apikey hashing and upload tokens."""
        return self.data_dir / "secret.key"
