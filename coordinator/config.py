"""Coordinator settings. The CLI fills them from flags and `HORDE_*` environment variables."""

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: `rate` requests per second on average, bursts up to `burst`."""

    rate: float
    burst: int


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
    max_body_bytes: int = 20 * 1024 * 1024
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
    trust_forwarded_for: bool = False
    maintenance_interval: float = 5.0
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
