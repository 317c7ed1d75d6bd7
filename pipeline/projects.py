"""The Amplitude projects a run exports, and which project id each key pair exports.

One project (the usual case) is `AMPLITUDE_API_KEY`, `AMPLITUDE_SECRET_KEY`, `AMPLITUDE_REGION`
and, optionally, `AMPLITUDE_PROJECT_ID`. Several are listed by name in `AMPLITUDE_PROJECTS`
(`prod,staging`), each with its own settings under `AMPLITUDE_<NAME>_`:

    AMPLITUDE_PROJECTS=prod,staging
    AMPLITUDE_PROD_API_KEY=...      AMPLITUDE_PROD_SECRET_KEY=...      AMPLITUDE_PROD_REGION=eu
    AMPLITUDE_STAGING_API_KEY=...   AMPLITUDE_STAGING_SECRET_KEY=...   (region: us)

`AMPLITUDE_<NAME>_PROJECT_ID` and `AMPLITUDE_<NAME>_EXPORT_URL` are optional; a project
without its own region or URL takes `AMPLITUDE_REGION` / `AMPLITUDE_EXPORT_URL`.

A key pair belongs to exactly one project, but nothing in the Export API says which until an
export holds data (its members are named `<project_id>/...`). The id is then remembered per
key pair, under a one-way fingerprint of the API key (never the key itself):
`json_data/.manifests/keys.json` locally, and `<prefix>-manifests/keys/<fingerprint>.json` in
S3 once load.py publishes it, so a new laptop finds it again. `AMPLITUDE_PROJECT_ID` makes it
explicit: an export of another project is then refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from pipeline.durable import make_dirs, write_atomic
from pipeline.errors import PipelineError, UsageError
from pipeline.layout import manifest_prefix
from pipeline.manifest import LOCAL_DIR
from pipeline.settings import Settings

log = logging.getLogger("pipeline.projects")

KEYS_FILE = "keys.json"
DEFAULT_NAME = "default"  # the one project of AMPLITUDE_API_KEY & co.
_NAME = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class Source:
    """One Amplitude project as configured: its name, key pair, endpoint and id if given."""

    name: str
    export_url: str
    api_key: str | None
    secret_key: str | None
    project_id: str | None  # AMPLITUDE_[<NAME>_]PROJECT_ID, explicit
    prefix: str  # its settings' names start with this: AMPLITUDE_ or AMPLITUDE_<NAME>_

    def auth(self) -> tuple[str, str]:
        """The key pair, or a UsageError naming the missing setting."""
        for name, value in (("API_KEY", self.api_key), ("SECRET_KEY", self.secret_key)):
            if not value:
                raise UsageError(
                    f"{self.prefix}{name} is not set: add it to .env (see .env.example); "
                    "extract.py needs it"
                )
        return self.api_key or "", self.secret_key or ""


def configured(settings: Settings) -> list[Source]:
    """The projects the settings list (AMPLITUDE_PROJECTS), or the one default project."""
    listed = settings.get("AMPLITUDE_PROJECTS")
    if listed is None:
        return [_source(settings, DEFAULT_NAME, "AMPLITUDE_")]
    names = [n.strip().lower() for n in listed.split(",") if n.strip()]
    bad = [n for n in names if not _NAME.fullmatch(n)]
    if not names or bad:
        raise UsageError(
            f"AMPLITUDE_PROJECTS is {listed!r}: list project names separated by commas, each "
            "a letter then letters, digits or _ (e.g. prod,staging)"
        )
    if len(set(names)) != len(names):
        raise UsageError(f"AMPLITUDE_PROJECTS names a project twice: {listed!r}")
    if settings.get("AMPLITUDE_API_KEY"):
        log.warning("AMPLITUDE_API_KEY is ignored: AMPLITUDE_PROJECTS lists the projects")
    return [_source(settings, n, f"AMPLITUDE_{n.upper()}_") for n in names]


def _source(settings: Settings, name: str, prefix: str) -> Source:
    region = f"{prefix}REGION" if settings.get(f"{prefix}REGION") else "AMPLITUDE_REGION"
    url = f"{prefix}EXPORT_URL" if settings.get(f"{prefix}EXPORT_URL") else "AMPLITUDE_EXPORT_URL"
    return Source(
        name=name,
        export_url=settings.export_url_for(region, url),
        api_key=settings.get(f"{prefix}API_KEY"),
        secret_key=settings.get(f"{prefix}SECRET_KEY"),
        project_id=check_project_id(settings.get(f"{prefix}PROJECT_ID"), f"{prefix}PROJECT_ID"),
        prefix=prefix,
    )


def select(sources: list[Source], name: str | None) -> list[Source]:
    """All sources, or only the one `--project NAME` names."""
    if name is None:
        return sources
    chosen = [s for s in sources if s.name == name.lower()]
    if not chosen:
        known = ", ".join(s.name for s in sources)
        raise UsageError(f"--project {name!r} is not configured (projects: {known})")
    return chosen


def fingerprint(api_key: str) -> str:
    """16 hex digits of SHA-256 over the API key: names the key pair, cannot recover it."""
    return hashlib.sha256(b"amplitude-api-key:" + api_key.encode()).hexdigest()[:16]


def check_project_id(value: str | None, name: str = "AMPLITUDE_PROJECT_ID") -> str | None:
    """A project id setting as given: digits only, or None when unset."""
    if value is None:
        return None
    value = value.strip()
    if not value.isascii() or not value.isdigit():
        raise UsageError(
            f"{name} is {value!r}: set it to the project's numeric id "
            "(Amplitude → Settings → Projects), or remove it"
        )
    return str(int(value))


class KeyRegistry:
    """Fingerprint → project id, local first, then the published copy in S3."""

    def __init__(self, data_dir: Path, s3=None, bucket: str | None = None, prefix: str = ""):
        self.data_dir = data_dir
        self.path = data_dir / LOCAL_DIR / KEYS_FILE
        self.s3, self.bucket = s3, bucket
        self.remote_root = f"{manifest_prefix(prefix)}/keys"

    def _read(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise PipelineError(
                f"{self.path} is unreadable ({exc}): move it away and rerun (the project ids "
                "are learned again from the next export, or set AMPLITUDE_PROJECT_ID)"
            ) from exc
        return {fp: dict(entry) for fp, entry in data.items()}

    def _write(self, entries: dict[str, dict]) -> None:
        make_dirs(self.path.parent, self.data_dir)
        write_atomic(self.path, (json.dumps(entries, indent=1, sort_keys=True) + "\n").encode())

    def remote_key(self, fp: str) -> str:
        return f"{self.remote_root}/{fp}.json"

    def lookup(self, fp: str) -> str | None:
        entry = self._read().get(fp)
        if entry is not None:
            return str(entry["project"])
        if self.s3 is None or self.bucket is None:
            return None
        key = self.remote_key(fp)
        try:  # list first: a GET of a missing key is a 403 to a prefix-limited loader
            listed = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=key, MaxKeys=1)
            if not any(o["Key"] == key for o in listed.get("Contents", [])):
                return None
            body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise _explain(exc, "s3:GetObject", self.bucket) from exc
        project = str(json.loads(body)["project"])
        self.remember(fp, project, published=True)
        return project

    def remember(self, fp: str, project: str, published: bool = False) -> None:
        """Record the key pair's project (unchanged if known: a published one stays so)."""
        entries = self._read()
        current = entries.get(fp)
        if current is not None and current["project"] == project:
            if current.get("published") or not published:
                return
        entries[fp] = {"project": project, "published": published}
        self._write(entries)

    def publish(self, kms_key: str) -> int:
        """Put every mapping S3 does not have yet (load.py); returns how many."""
        entries = self._read()
        todo = {fp: e for fp, e in entries.items() if not e.get("published")}
        if not todo or self.s3 is None or self.bucket is None:
            return 0
        for fp, entry in todo.items():
            body = json.dumps({"project": entry["project"]}).encode()
            try:
                self.s3.put_object(
                    Bucket=self.bucket,
                    Key=self.remote_key(fp),
                    Body=body,
                    ContentType="application/json",
                    ServerSideEncryption="aws:kms",
                    SSEKMSKeyId=kms_key,
                )
            except (ClientError, BotoCoreError) as exc:
                raise _explain(exc, "s3:PutObject", self.bucket, kms_key) from exc
            entries[fp] = {"project": entry["project"], "published": True}
        self._write(entries)
        return len(todo)


def _explain(exc: Exception, action: str, bucket: str, kms_key: str | None = None):
    from pipeline.s3 import explain

    return explain(exc, action=action, bucket=bucket, kms_key=kms_key)
