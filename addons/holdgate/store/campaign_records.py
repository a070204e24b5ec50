"""Certification campaigns in the store: a campaign's life and its items' decisions.

A campaign is a series of `campaigns` rows: `started`, then `closed`, then (once or more)
`applied`. Each item is one (identity, grant) as the review found it: an `open` row at
start, then at most one decision (`keep` or `revoke`) by a reviewer, with a reason. An
item's state is its latest `open|keep|revoke` row; rows are never updated.

A decision must pass `certification_refusal`: the campaign is not closed, the reviewer is
not the identity under review (separation of duties), the reviewer is in a reviewer group
(unless `reviewer_groups=None`: break-glass, the CLI's `--break-glass --as`), and the item
is still open. Re-certification within a campaign is refused: a decision is final, and a
changed mind is a new campaign. A refused decision is recorded as a `refused_attempt` row
and raised as a typed error, like a refused approval.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from holdgate.store.chain import append_rows, normalize_row
from holdgate.store.errors import (
    AlreadyCertified,
    BadRow,
    CampaignClosed,
    CertificationRefused,
    NotAReviewer,
    SelfCertification,
    UnknownCampaign,
)
from holdgate.store.rows import Row
from holdgate.store.sqlconn import SqlConnection, select, transaction

Verdict = Literal["keep", "revoke"]
ITEM_STATES = ("open", "keep", "revoke")
REFUSED = "refused_attempt"
# The most of a reason (and of a refused caller's name) a certification row keeps: a reason
# is for people to read, and the API takes bodies of up to 64 KiB from any caller.
REASON_CHARS = 2000
TARGET_KINDS = ("tool", "resource", "prompt")


@dataclass(frozen=True)
class ItemSpec:
    """What a campaign is started with, per item: an identity's grant and its use."""

    user: str
    upstream: str
    target_kind: str
    target: str
    rule: str
    usage: Mapping[str, Any]


@dataclass(frozen=True)
class Item:
    campaign_id: str
    item_id: str
    user: str
    upstream: str
    target_kind: str
    target: str
    rule: str
    usage: dict[str, Any]
    state: str
    reviewer: str | None = None
    reason: str | None = None
    decided_at: str | None = None
    refused: tuple[dict[str, Any], ...] = ()
    # How the decision was made: {channel, decided_as} (from the decision row's `usage`
    # column, which an open row uses for the grant's use; empty before issue 27).
    decided_how: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "campaign_id": self.campaign_id,
            "item_id": self.item_id,
            "user": self.user,
            "upstream": self.upstream,
            "target_kind": self.target_kind,
            "target": self.target,
            "rule": self.rule,
            "usage": self.usage,
            "state": self.state,
            "reviewer": self.reviewer,
            "reason": self.reason,
            "decided_at": self.decided_at,
            "decided_how": self.decided_how,
            "refused_attempts": list(self.refused),
        }


@dataclass(frozen=True)
class Campaign:
    campaign_id: str
    state: str  # the latest event: started | closed | applied
    period_start: str
    period_end: str
    config_hash: str
    started_by: str
    started_at: str
    events: tuple[dict[str, Any], ...] = ()
    items: tuple[Item, ...] = field(default=())

    def progress(self) -> dict[str, int]:
        counts = {state: 0 for state in ITEM_STATES}
        for item in self.items:
            counts[item.state] += 1
        return counts

    def to_json(self, *, with_items: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "campaign_id": self.campaign_id,
            "state": self.state,
            "period_start": self.period_start,
            "period_end": self.period_end,
            "config_hash": self.config_hash,
            "started_by": self.started_by,
            "started_at": self.started_at,
            "progress": self.progress(),
            "events": list(self.events),
        }
        if with_items:
            out["items"] = [item.to_json() for item in self.items]
        return out


def new_campaign_id(now: float | None = None) -> str:
    """`rc-YYYYMMDD-xxxxxx`: sortable by day, unguessable enough to never collide."""
    day = time.strftime("%Y%m%d", time.gmtime(time.time() if now is None else now))
    return f"rc-{day}-{secrets.token_hex(3)}"


def campaign_of(item_id: str) -> str:
    """Item ids are `CAMPAIGN.N`: an item names its campaign."""
    return item_id.rpartition(".")[0]


def start(
    conn: SqlConnection,
    campaign_id: str,
    period: tuple[str, str],
    config_hash: str,
    actor: str,
    detail: Mapping[str, Any],
    specs: Sequence[ItemSpec],
) -> Campaign:
    """Record a started campaign and one open item per spec, in one transaction."""
    for spec in specs:
        if spec.target_kind not in TARGET_KINDS:
            raise BadRow(
                f"certifications.target_kind: {spec.target_kind!r} is not one of {TARGET_KINDS}"
            )
    rows: list[tuple[str, Row]] = [
        (
            "campaigns",
            normalize_row(
                "campaigns",
                {
                    "campaign_id": campaign_id,
                    "event": "started",
                    "period_start": period[0],
                    "period_end": period[1],
                    "config_hash": config_hash,
                    "actor": actor,
                    "detail": json.dumps(dict(detail), sort_keys=True),
                },
            ),
        )
    ]
    for n, spec in enumerate(specs, 1):
        row = {
            "campaign_id": campaign_id,
            "item_id": f"{campaign_id}.{n}",
            "user": spec.user,
            "upstream": spec.upstream,
            "target_kind": spec.target_kind,
            "target": spec.target,
            "rule": spec.rule,
            "usage": json.dumps(dict(spec.usage), sort_keys=True),
            "state": "open",
        }
        rows.append(("certifications", normalize_row("certifications", row)))
    with transaction(conn):
        if _events(conn, campaign_id):
            raise BadRow(f"campaign {campaign_id} exists already")
        append_rows(conn, rows)
        found = load(conn, campaign_id)
    if found is None:  # cannot happen: written in the transaction above
        raise UnknownCampaign(f"no campaign {campaign_id}")
    return found


def _events(conn: SqlConnection, campaign_id: str) -> list[dict[str, Any]]:
    return select(conn, "SELECT * FROM campaigns WHERE campaign_id = ? ORDER BY seq", [campaign_id])


def _items(rows: Iterable[Mapping[str, Any]]) -> list[Item]:
    """Each item's state from its rows in seq order: the latest decision row, with the
    refused attempts logged against it."""
    firsts: dict[str, Mapping[str, Any]] = {}
    latest: dict[str, Mapping[str, Any]] = {}
    refused: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        item_id = row["item_id"]
        firsts.setdefault(item_id, row)
        if row["state"] == REFUSED:
            refused.setdefault(item_id, []).append(
                {
                    "ts": row["ts"],
                    "reviewer": row.get("reviewer"),
                    "reason": row.get("reason"),
                    **_how(row),
                }
            )
        else:
            latest[item_id] = row
    out = []
    for item_id, first in firsts.items():
        now = latest.get(item_id, first)
        decided = now["state"] != "open"
        out.append(
            Item(
                campaign_id=first["campaign_id"],
                item_id=item_id,
                user=first["user"],
                upstream=first.get("upstream") or "",
                target_kind=first["target_kind"],
                target=first["target"],
                rule=first.get("rule") or "",
                usage=json.loads(first.get("usage") or "{}"),
                state=now["state"],
                reviewer=now.get("reviewer") if decided else None,
                reason=now.get("reason") if decided else None,
                decided_at=now["ts"] if decided else None,
                refused=tuple(refused.get(item_id, ())),
                decided_how=_how(now) if decided else {},
            )
        )
    return out


def _how(row: Mapping[str, Any]) -> dict[str, Any]:
    """A decision row's {channel, decided_as}, kept in its `usage` column."""
    try:
        how = json.loads(row.get("usage") or "{}")
    except (TypeError, json.JSONDecodeError):
        return {}
    return how if isinstance(how, dict) else {}


def load(conn: SqlConnection, campaign_id: str) -> Campaign | None:
    """A campaign with its events and items, or None."""
    events = _events(conn, campaign_id)
    if not events:
        return None
    rows = select(
        conn, "SELECT * FROM certifications WHERE campaign_id = ? ORDER BY seq", [campaign_id]
    )
    first = events[0]
    return Campaign(
        campaign_id=campaign_id,
        state=events[-1]["event"],
        period_start=first["period_start"],
        period_end=first["period_end"],
        config_hash=first.get("config_hash") or "",
        started_by=first.get("actor") or "",
        started_at=first["ts"],
        events=tuple(
            {k: e.get(k) for k in ("ts", "event", "actor", "detail", "config_hash")} for e in events
        ),
        items=tuple(_items(rows)),
    )


def listed(conn: SqlConnection) -> list[Campaign]:
    """Every campaign, oldest first."""
    ids = select(
        conn,
        "SELECT campaign_id, min(seq) AS first_seq FROM campaigns GROUP BY campaign_id ORDER BY 2",
    )
    return [c for row in ids if (c := load(conn, row["campaign_id"])) is not None]


def certification_refusal(
    campaign: Campaign | None,
    item: Item | None,
    item_id: str,
    reviewer: str,
    reviewer_groups: Iterable[str] | None,
    allowed_groups: Iterable[str],
) -> CertificationRefused | None:
    """The rules for a decision, in order: the item exists, its campaign is open, the
    reviewer is not the identity reviewed, is a reviewer, and the item is still open."""
    if campaign is None or item is None:
        return UnknownCampaign(f"no item {item_id}; see `holdgate review status`")
    if campaign.state != "started":
        return CampaignClosed(
            f"campaign {campaign.campaign_id} is {campaign.state}: no more decisions"
        )
    if reviewer == item.user:
        return SelfCertification(
            f"{reviewer} cannot certify their own access (separation of duties)"
        )
    allowed = set(allowed_groups)
    if reviewer_groups is not None and not set(reviewer_groups) & allowed:
        groups = ", ".join(sorted(allowed)) or "none configured: add review.reviewers"
        return NotAReviewer(f"{reviewer} is not in the reviewer groups ({groups})")
    if item.state != "open":
        return AlreadyCertified(
            f"item {item_id} was decided already: {item.state} by {item.reviewer} at "
            f"{item.decided_at}; a decision is final (start a new campaign to review again)"
        )
    return None


def bounded(text: str, limit: int = REASON_CHARS) -> str:
    """`text`, or its first `limit` characters and a marker saying how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [truncated: {len(text)} characters]"


def certify(
    conn: SqlConnection,
    item_id: str,
    verdict: Verdict,
    reviewer: str,
    reason: str,
    reviewer_groups: Iterable[str] | None,
    allowed_groups: Iterable[str] = (),
    note: str = "",
    how: Mapping[str, Any] | None = None,
) -> Item:
    """A reviewer's decision: recorded and returned, or recorded as refused (with `note`
    after the refusal's reason) and raised. Reasons are kept to `REASON_CHARS`. `how`
    ({channel, decided_as}: how it was made) goes in the row's `usage` column, which only
    an open row uses otherwise."""
    if verdict not in ("keep", "revoke"):
        raise BadRow(f"not a decision: {verdict!r} (keep or revoke)")
    if not reason.strip():
        raise BadRow("a decision needs a reason (--reason, or `reason` in the body)")
    groups = None if reviewer_groups is None else tuple(reviewer_groups)
    with transaction(conn):
        campaign = load(conn, campaign_of(item_id))
        item = next((i for i in campaign.items if i.item_id == item_id), None) if campaign else None
        problem = certification_refusal(campaign, item, item_id, reviewer, groups, allowed_groups)
        if item is not None:
            state, why = (
                (verdict, reason)
                if problem is None
                else (REFUSED, f"{verdict} refused: {problem}{note}")
            )
            row = {
                "campaign_id": item.campaign_id,
                "item_id": item_id,
                "user": item.user,
                "upstream": item.upstream,
                "target_kind": item.target_kind,
                "target": item.target,
                "rule": item.rule,
                "state": state,
                "reviewer": bounded(reviewer) if problem is not None else reviewer,
                "reason": bounded(why),
                "usage": json.dumps(dict(how), sort_keys=True) if how else None,
            }
            append_rows(conn, [("certifications", normalize_row("certifications", row))])
        after = load(conn, campaign_of(item_id))
    if problem is not None:
        raise problem
    decided = next(i for i in after.items if i.item_id == item_id) if after else None
    if decided is None:  # cannot happen: the item was found above
        raise UnknownCampaign(f"no item {item_id}")
    return decided


def append_event(
    conn: SqlConnection,
    campaign_id: str,
    event: Literal["closed", "applied"],
    actor: str,
    detail: Mapping[str, Any],
) -> Campaign:
    """Close a started campaign, or record that a closed one was applied."""
    with transaction(conn):
        campaign = load(conn, campaign_id)
        if campaign is None:
            raise UnknownCampaign(f"no campaign {campaign_id}; see `holdgate review status`")
        if event == "closed" and campaign.state != "started":
            raise CampaignClosed(f"campaign {campaign_id} is {campaign.state} already")
        if event == "applied" and campaign.state == "started":
            raise CampaignClosed(
                f"campaign {campaign_id} is still open: close it first "
                f"(`holdgate review campaign close {campaign_id}`)"
            )
        row = {
            "campaign_id": campaign_id,
            "event": event,
            "period_start": campaign.period_start,
            "period_end": campaign.period_end,
            "config_hash": campaign.config_hash,
            "actor": actor,
            "detail": json.dumps(dict(detail), sort_keys=True),
        }
        append_rows(conn, [("campaigns", normalize_row("campaigns", row))])
        found = load(conn, campaign_id)
    if found is None:  # cannot happen
        raise UnknownCampaign(f"no campaign {campaign_id}")
    return found
