"""Evaluate requests against policies with a real IAM evaluator, from pytest.

`evaluate` runs tests/iam/evaluate.mjs (npm's @cloud-copilot/iam-simulate, pinned in
tests/iam/package-lock.json) once for a whole list of requests. `make test` installs it
(`npm ci --prefix tests/iam`); without node or the package the tests fail, never skip.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "evaluate.mjs"
PACKAGE = HERE / "node_modules" / "@cloud-copilot" / "iam-simulate"
INSTALL = "run `make test`, or `npm ci --prefix tests/iam` (Node.js 20 or later)"

# iam-simulate's marker for an unsigned request.
ANONYMOUS = {"type": "Anonymous"}


class EvaluatorMissing(RuntimeError):
    """node or the pinned evaluator is not installed."""


@dataclass(frozen=True)
class Request:
    """One request, as the caller's credentials would send it."""

    principal: str | dict
    action: str
    resource: str
    account: str  # the resource's account
    context: dict[str, str | list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    """What the evaluator decided and why (statements as `policyType:Sid`)."""

    result: str  # Allowed, ExplicitlyDenied or ImplicitlyDenied
    denied_by: tuple[str, ...] = ()
    ignored_context_keys: tuple[str, ...] = ()


def simulation(request: Request, identity: list[dict], resource_policy: dict | None = None) -> dict:
    """iam-simulate's input: the caller's identity policies plus the resource's policy."""
    body: dict[str, Any] = {
        "request": {
            "principal": request.principal,
            "action": request.action,
            "resource": {"resource": request.resource, "accountId": request.account},
            "contextVariables": request.context,
        },
        "identityPolicies": [{"name": f"policy{i}", "policy": p} for i, p in enumerate(identity)],
        "serviceControlPolicies": [],
        "resourceControlPolicies": [],
    }
    if resource_policy is not None:
        body["resourcePolicy"] = resource_policy
    return body


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        raise EvaluatorMissing(f"node is not installed: the policy tests need it; {INSTALL}")
    if not PACKAGE.is_dir():
        raise EvaluatorMissing(f"@cloud-copilot/iam-simulate is not installed: {INSTALL}")
    return node


def evaluate(simulations: list[dict]) -> list[Decision]:
    """Every simulation's decision, in order, from one node process."""
    done = subprocess.run(
        [_node(), str(SCRIPT)],
        input=json.dumps(simulations),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{SCRIPT.name} failed ({done.returncode}): {done.stderr.strip()}")
    decisions = []
    for answer in json.loads(done.stdout):
        if answer["result"] == "Error":
            raise ValueError(f"iam-simulate refused a request: {json.dumps(answer['errors'])}")
        decisions.append(
            Decision(
                answer["result"],
                tuple(answer["deniedBy"]),
                tuple(answer["ignoredContextKeys"]),
            )
        )
    return decisions
