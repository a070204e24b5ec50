"""What the audit store raises, as one tree so each caller catches what it can handle:

    StoreError                  anything the audit store cannot do
    ├── StoreUnavailable        the store cannot be opened, read or written
    │   └── StoreNotFound       no store at that path (readers never create one)
    ├── StoreNotSupported       a store URL this holdgate has no backend for
    ├── SchemaTooNew            the store was written by a newer holdgate
    ├── BadRow                  a row names an unknown table or column, or a bad value
    ├── ReplicaNameTaken        another live process already uses this replica name
    └── ApprovalRefused         the approval rules refuse a change to an approval
        ├── UnknownApproval     no approval with that id
        ├── ApprovalNotPending  the approval is not in the state the change needs
        ├── ApprovalExpired     the decision came after the approval expired, or its
        │                       holding replica stopped heartbeating (holder lost)
        ├── SelfApproval        the requester tried to decide their own request
        └── NotAnApprover       the decider is in none of the approval's approver groups
    └── CertificationRefused    the campaign rules refuse a change to a campaign or item
        ├── UnknownCampaign     no campaign (or no item) with that id
        ├── CampaignClosed      the campaign is closed (or not yet): no such change now
        ├── SelfCertification   the reviewer tried to certify their own access
        ├── NotAReviewer        the reviewer is in none of the config's reviewer groups
        └── AlreadyCertified    the item was decided already (no re-certification)

The edges map them: the CLI turns every StoreError into a message (exit 1); the approvals
API answers UnknownApproval 404, SelfApproval and NotAnApprover 403, ApprovalNotPending
and ApprovalExpired 409; campaigns alike: UnknownCampaign 404, SelfCertification and
NotAReviewer 403, CampaignClosed and AlreadyCertified 409.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class StoreError(Exception):
    """Anything the audit store cannot do."""


class StoreUnavailable(StoreError):
    """The store cannot be opened, read or written."""


class StoreNotFound(StoreUnavailable):
    """No store at that path (readers never create one)."""


class StoreNotSupported(StoreError):
    """A store URL this holdgate has no backend for."""


class SchemaTooNew(StoreError):
    """The store was written by a newer holdgate."""


class BadRow(StoreError):
    """A row names an unknown table or column, or a value of the wrong type."""


class ReplicaNameTaken(StoreError):
    """Another live process (a different instance, heartbeating) already uses this name."""


class ApprovalRefused(StoreError):
    """The approval rules refuse a change to an approval; `current` is its latest state."""

    def __init__(
        self, message: str, approval_id: str, current: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.approval_id = approval_id
        self.current = current


class UnknownApproval(ApprovalRefused):
    """No approval with that id."""


class ApprovalNotPending(ApprovalRefused):
    """The approval is not in the state the change needs (usually: already decided)."""


class ApprovalExpired(ApprovalRefused):
    """The decision came too late: the approval expired, or its holder was lost."""


class SelfApproval(ApprovalRefused):
    """The requester tried to decide their own request (separation of duties)."""


class NotAnApprover(ApprovalRefused):
    """The decider is in none of the approval's approver groups."""


class CertificationRefused(StoreError):
    """The campaign rules refuse a change; `status` is the HTTP status the API answers."""

    status = 409


class UnknownCampaign(CertificationRefused):
    """No campaign, or no item, with that id."""

    status = 404


class CampaignClosed(CertificationRefused):
    """The campaign is closed (or, for apply, still open): the change does not fit its state."""


class SelfCertification(CertificationRefused):
    """The reviewer tried to certify their own access (separation of duties)."""

    status = 403


class NotAReviewer(CertificationRefused):
    """The reviewer is in none of the config's `review.reviewers` groups."""

    status = 403


class AlreadyCertified(CertificationRefused):
    """The item was decided already; a decision is final within its campaign."""
