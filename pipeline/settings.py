"""Settings: `.env` in the repo root, overridden by variables already set in the environment.

A value that is the empty string counts as unset, wherever it is: an empty variable in the
environment does not hide `.env`'s value (so `S3_BUCKET=` in a cron environment cannot switch
off the gap check), and an empty line in `.env` takes the default.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dotenv import dotenv_values

from pipeline.errors import UsageError

REPO_ROOT = Path(__file__).resolve().parent.parent

EXPORT_URLS = {
    "us": "https://amplitude.com/api/2/export",
    "eu": "https://analytics.eu.amplitude.com/api/2/export",
}

# Values of these settings are never printed or logged (see pipeline.logs.redact).
SECRET_NAMES = (
    "AMPLITUDE_API_KEY",
    "AMPLITUDE_SECRET_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "SNOWFLAKE_PASSWORD",
    "SNOWFLAKE_PRIVATE_KEY_PASSPHRASE",
)

# A project's own key pair when several are listed (AMPLITUDE_PROJECTS): AMPLITUDE_<NAME>_...
_PROJECT_SECRET = re.compile(r"AMPLITUDE_[A-Z0-9_]+_(API_KEY|SECRET_KEY)")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Settings:
    """Merged settings; read through the typed properties or `get`/`require`."""

    values: Mapping[str, str]

    def get(self, name: str, default: str | None = None) -> str | None:
        value = self.values.get(name)
        return value if value not in (None, "") else default

    def require(self, name: str, needed_for: str = "this command") -> str:
        value = self.get(name)
        if value is None:
            raise UsageError(
                f"{name} is not set: add it to .env (see .env.example); {needed_for} needs it"
            )
        return value

    def secrets(self) -> list[str]:
        """The secret values present, for redaction (every project's key pair included)."""
        names = [n for n in self.values if _PROJECT_SECRET.fullmatch(n)]
        return [v for n in (*SECRET_NAMES, *names) if (v := self.get(n))]

    @property
    def log_level(self) -> str:
        return (self.get("LOG_LEVEL", "INFO") or "INFO").upper()

    @property
    def json_data_dir(self) -> Path:
        return Path(self.get("JSON_DATA_DIR", "json_data") or "json_data")

    @property
    def s3_bucket(self) -> str | None:
        return self.get("S3_BUCKET")

    @property
    def s3_prefix(self) -> str:
        prefix = (self.get("S3_PREFIX", "amplitude") or "").strip("/")
        if not prefix:
            raise UsageError(
                "S3_PREFIX is only slashes: set a prefix such as amplitude (the stage reads "
                "everything under it, and the manifests live beside it)"
            )
        return prefix

    @property
    def s3_gzip(self) -> bool:
        return self.flag("S3_GZIP")

    @property
    def kms_key_id(self) -> str | None:
        return self.get("KMS_KEY_ID")

    @property
    def export_url(self) -> str:
        return self.export_url_for("AMPLITUDE_REGION", "AMPLITUDE_EXPORT_URL")

    def export_url_for(self, region_name: str, url_name: str) -> str:
        """The export endpoint: `url_name` if set, else the one of region `region_name`."""
        override = self.get(url_name)
        if override:
            return override
        region = (self.get(region_name, "us") or "us").lower()
        if region not in EXPORT_URLS:
            raise UsageError(f"{region_name} is {region!r}: set it to 'us' or 'eu'")
        return EXPORT_URLS[region]

    def flag(self, name: str, default: bool = False) -> bool:
        raw = (self.get(name) or "").strip().lower()
        if raw == "":
            return default
        if raw in _TRUE:
            return True
        if raw in _FALSE:
            return False
        raise UsageError(f"{name} is {raw!r}: set it to true or false")


def load_settings(
    environ: Mapping[str, str] | None = None, env_file: Path | None = None
) -> Settings:
    """Read `.env` (default: the repo root's), then let the environment win."""
    env_file = env_file if env_file is not None else REPO_ROOT / ".env"
    merged: dict[str, str] = {}
    if env_file.is_file():
        merged.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    environment = os.environ if environ is None else environ
    merged.update({k: v for k, v in environment.items() if v != ""})
    return Settings(values=merged)
