"""Certification campaigns off the store: the candidate policy a campaign's revocations
give (`narrowed_policy`), and the export of its items for GRC tools.

Narrowing: for each identity, upstream and kind with revoked grants, one `deny` rule is put
at the top of `rules:`, matching that user (`users: [U]`), that upstream and the revoked
names. Every other rule is left as written, so a rule granting `tool: [a, b, c]` to a group
keeps b and c for everyone and a for everyone but the revoked user. At the top, the deny
wins whichever rule (or later grant) would have allowed the call: a revoked grant is gone,
not moved. Names are matched as globs, so a tool whose own name holds `*` or `?` is denied
with every name the glob matches: narrower, never wider.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import yaml

from holdgate.store.campaign_records import Campaign, Item

EXPORT_COLUMNS = (
    "campaign_id",
    "campaign_state",
    "period_start",
    "period_end",
    "config_hash",
    "item_id",
    "user",
    "upstream",
    "target_kind",
    "target",
    "rule",
    "calls",
    "denied",
    "first_use",
    "last_use",
    "sessions",
    "decision",
    "reviewer",
    "reason",
    "decided_at",
    "refused_attempts",
)


def export_rows(campaign: Campaign) -> list[dict[str, Any]]:
    """One row per item, columns `EXPORT_COLUMNS` (stable: only ever added at the end)."""
    return [
        {
            "campaign_id": campaign.campaign_id,
            "campaign_state": campaign.state,
            "period_start": campaign.period_start,
            "period_end": campaign.period_end,
            "config_hash": campaign.config_hash,
            "item_id": item.item_id,
            "user": item.user,
            "upstream": item.upstream,
            "target_kind": item.target_kind,
            "target": item.target,
            "rule": item.rule,
            "calls": item.usage.get("calls", 0),
            "denied": item.usage.get("denied", 0),
            "first_use": item.usage.get("first"),
            "last_use": item.usage.get("last"),
            "sessions": item.usage.get("sessions", 0),
            "decision": item.state,
            "reviewer": item.reviewer,
            "reason": item.reason,
            "decided_at": item.decided_at,
            "refused_attempts": len(item.refused),
        }
        for item in campaign.items
    ]


def revocation_rules(
    campaign_id: str, revoked: Iterable[Item], taken: Iterable[str]
) -> list[dict[str, Any]]:
    """The deny rules that take the revoked grants away, named apart from `taken`."""
    grouped: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for item in revoked:
        grouped[(item.user, item.upstream, item.target_kind)].append(item.target)
    names = set(taken)
    rules = []
    for (user, upstream, kind), targets in sorted(grouped.items()):
        base = f"revoked in review {campaign_id}: {user} {kind}s on {upstream or 'any upstream'}"
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base} ({n})"
        names.add(name)
        match: dict[str, Any] = {"users": [user]}
        if upstream:
            match["upstream"] = upstream
        match[kind] = sorted(set(targets))
        rules.append(
            {
                "name": name,
                "match": match,
                "action": "deny",
                "reason": f"access revoked in access review {campaign_id}",
            }
        )
    return rules


class NotNarrowable(ValueError):
    """The config file is not a mapping with a `rules:` list we can put rules in front of."""


def narrowed_policy(config_text: str, campaign: Campaign) -> tuple[str, list[dict[str, Any]]]:
    """The config text with the campaign's revocations denied first, and those rules."""
    try:
        doc = yaml.safe_load(config_text)
    except yaml.YAMLError as exc:
        raise NotNarrowable(f"the config is not YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("rules", []), list):
        raise NotNarrowable("the config has no `rules:` list")
    rules = list(doc.get("rules") or [])
    taken = [str(r.get("name")) for r in rules if isinstance(r, dict)]
    revoked = [i for i in campaign.items if i.state == "revoke"]
    added = revocation_rules(campaign.campaign_id, revoked, taken)
    doc["rules"] = added + rules
    head = (
        f"# Candidate policy from access review {campaign.campaign_id}: "
        f"{len(revoked)} revoked grants denied by the first {len(added)} rules.\n"
        f"# Check it: holdgate policy check FILE; holdgate policy replay FILE --db STORE\n"
    )
    body = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100)
    return head + body, added


def export_json(campaign: Campaign) -> str:
    return json.dumps(
        {"campaign": campaign.to_json(with_items=False), "items": export_rows(campaign)},
        indent=2,
        ensure_ascii=False,
    )
