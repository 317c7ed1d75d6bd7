"""The AWS side as code: KMS key, locked-down bucket, loader user and Snowflake role.

    python setup_aws.py plan      # shows what exists and what apply would create; changes nothing
    python setup_aws.py apply     # creates what is missing; safe to rerun at any time
    python setup_aws.py trust --snowflake-user-arn ARN --external-id ID
    python setup_aws.py render    # rewrites aws/*.json (the same policies, for the console)

Run it with administrator credentials (AWS_PROFILE, or keys in the environment).
See docs/aws-setup.md.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline import aws_setup, settings
from pipeline.cli import ArgumentParser, configure_logging, run

log = logging.getLogger("pipeline.setup_aws")

AWS_DIR = Path(__file__).resolve().parent / "aws"


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="setup_aws.py", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="plan|apply|trust|render")
    for name, help_text in (
        ("plan", "show every resource and policy, and what apply would do; change nothing"),
        ("apply", "create what is missing, leave what exists alone"),
    ):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument(
            "--create-access-key",
            action="store_true",
            help="also give the loader user an access key, written only to .env (mode 600)",
        )
        cmd.add_argument(
            "--skip-bucket-policy",
            action="store_true",
            help="leave the bucket policy out (only for local stand-ins such as moto, which "
            "ignore conditions and would deny every upload)",
        )
    trust = sub.add_parser("trust", help="write the Snowflake role's trust relationship")
    trust.add_argument(
        "--snowflake-user-arn", required=True, help="STORAGE_AWS_IAM_USER_ARN of DESC INTEGRATION"
    )
    trust.add_argument(
        "--external-id", required=True, help="STORAGE_AWS_EXTERNAL_ID of DESC INTEGRATION"
    )
    sub.add_parser("render", help="rewrite aws/*.json from the policy functions")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "render":
        for path in aws_setup.render_documents(AWS_DIR):
            print(f"wrote {path.relative_to(AWS_DIR.parent)}")
        return 0
    env_file = settings.REPO_ROOT / ".env"
    current = settings.load_settings(env_file=env_file)
    configure_logging(current.log_level, current.secrets())
    clients = aws_setup.make_clients(current)
    config = aws_setup.config_from_settings(current, clients.kms.meta.region_name)

    if args.command == "trust":
        change = aws_setup.write_trust(clients, config, args.snowflake_user_arn, args.external_id)
        print(f"trust relationship of role {config.snowflake_role}:")
        print(change.line(applied=True))
        print(f"STORAGE_AWS_ROLE_ARN for the storage integration: {change.detail}")
        return 0

    applying = args.command == "apply"
    outcome = aws_setup.reconcile(
        clients,
        config,
        apply=applying,
        access_key_env=env_file if args.create_access_key else None,
        bucket_policy=not args.skip_bucket_policy,
    )
    where = f"s3://{config.bucket}/{config.prefix}, {config.region}, account {outcome.account}"
    print(f"{'apply' if applying else 'plan (nothing is changed)'}: {where}")
    for change in outcome.changes:
        print(change.line(applied=applying))
    changed = outcome.changed
    if not applying:
        for change in changed:
            if change.document is not None:
                print(f"\n{change.kind} {change.name} ({change.status}):")
                print(json.dumps(change.document, indent=2))
        print(f"\n{len(changed)} to create or update; run `python setup_aws.py apply` to do it.")
        return 0
    print(f"\n{len(changed)} created or updated, {len(outcome.changes) - len(changed)} unchanged.")
    print("Settings for .env:")
    print(f"  S3_BUCKET={config.bucket}")
    print(f"  KMS_KEY_ID={outcome.key_arn}")
    print(f"Snowflake role (STORAGE_AWS_ROLE_ARN): {aws_setup.role_arn(outcome.account, config)}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
