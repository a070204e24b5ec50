"""A review's inputs read from the store and the config: the evidence (hash chain, signed
checkpoints), the people who decide, and the model of one period. Shared by `holdgate
review` and the campaigns API, which starts a campaign on the gateway's own store and the
config in force. (Here, not in `reports`: the reports never import the composed config.)"""

from __future__ import annotations

import getpass
from pathlib import Path

from holdgate.config.gateway_config import GatewayConfig
from holdgate.reports.decision_findings import Deciders
from holdgate.reports.review_model import (
    Evidence,
    Header,
    Inputs,
    Review,
    build_review,
    versions_in_force,
)
from holdgate.store import Store, iso
from holdgate.store.checkpoints import BadKey, load_public_key, read_witness, verify_witness


def evidence(
    store: Store, config: GatewayConfig, witness: str | None, public_keys: tuple[str, ...]
) -> Evidence:
    """The store's `verify()`, and the signed checkpoints when keys to check them are given."""
    report = store.verify()
    problems = []
    if report.ok:
        chain = f"hash chain intact ({report.rows_checked} rows)"
    else:
        where = f" at {report.at[0]} seq {report.at[1]}" if report.at else ""
        chain = f"hash chain BROKEN{where}: {report.problem}"
        problems.append(chain)
    source = witness
    if source is None and config.checkpoints is not None:
        source = (
            config.checkpoints.witness.target if config.checkpoints.witness.kind == "file" else None
        )
    if config.checkpoints is None and witness is None:
        checkpoints = "signed checkpoints: not configured"
    elif source is None or not public_keys:
        checkpoints = (
            f"signed checkpoints configured ({source or 'not a file witness'}), not checked "
            "here: pass --witness FILE --public-key KEY.pub"
        )
    else:
        try:
            keys = [load_public_key(Path(p).read_bytes()) for p in public_keys]
            checked = verify_witness(store, read_witness(source), keys)
        except (OSError, BadKey) as exc:
            checked = None
            checkpoints = f"signed checkpoints NOT verified: {exc}"
            problems.append(checkpoints)
        if checked is not None and checked.ok:
            checkpoints = f"{checked.checked} signed checkpoints verified in {source}"
        elif checked is not None:
            checkpoints = f"signed checkpoints FAIL in {source}: {checked.problem}"
            problems.append(checkpoints)
    return Evidence(report.ok, chain, checkpoints, tuple(problems))


def build(
    store: Store,
    config: GatewayConfig,
    period: tuple[str, str],
    actor: str | None,
    witness: str | None = None,
    public_keys: tuple[str, ...] = (),
) -> Review:
    since, until = period
    versions = store.config_versions()
    header = Header(
        period_start=since,
        period_end=until,
        generated_at=iso(),
        generated_by=actor or getpass.getuser(),
        store=store.name,
        config_file=f"{config.file} (sha256 {config.digest[:12]})",
        evidence=evidence(store, config, witness, public_keys),
        config_versions=tuple(versions_in_force(versions, since, until)),
    )
    inputs = Inputs(
        events=store.events(since, until),
        approvals=store.approvals(),
        sessions=store.sessions(since),
        tool_pins=store.tool_pin_rows(),
        config_versions=versions,
        campaigns=store.campaigns(),
    )
    return build_review(inputs, config.policy, header, deciders_of(config))


def deciders_of(config: GatewayConfig) -> Deciders:
    """What the config says of the people who decide, for the review's exceptions."""
    keys = config.identity.api_keys if config.identity is not None else ()
    return Deciders(config.review.reviewers, {key.name: key.groups for key in keys})
