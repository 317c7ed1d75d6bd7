"""Which Amplitude project a key pair exports.

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
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from pipeline.durable import make_dirs, write_atomic
from pipeline.errors import PipelineError, UsageError
from pipeline.layout import manifest_prefix
from pipeline.manifest import LOCAL_DIR

log = logging.getLogger("pipeline.projects")

KEYS_FILE = "keys.json"


def fingerprint(api_key: str) -> str:
    """16 hex digits of SHA-256 over the API key: names the key pair, cannot recover it."""
    return hashlib.sha256(b"amplitude-api-key:" + api_key.encode()).hexdigest()[:16]


def check_project_id(value: str | None) -> str | None:
    """AMPLITUDE_PROJECT_ID as given: digits only, or None when unset."""
    if value is None:
        return None
    value = value.strip()
    if not value.isascii() or not value.isdigit():
        raise UsageError(
            f"AMPLITUDE_PROJECT_ID is {value!r}: set it to the project's numeric id "
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
        entries = self._read()
        if entries.get(fp) == {"project": project, "published": published}:
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
