"""Who the approvals API shows an approval to (issue 13 item 9): approvers and the requester."""

import pytest

from holdgate.approvals.approval_rules import may_see
from holdgate.store.approval_records import approver_groups

ROW = {"approval_id": "a1", "requester": "alice", "approvers": '["dba"]'}


@pytest.mark.parametrize(
    ("user", "groups", "shown"),
    [
        ("dana", ("dba", "engineering"), True),  # an approver
        ("alice", ("support",), True),  # the requester follows her own request
        ("bob", ("engineering",), False),  # neither
        ("bob", (), False),
        ("Alice", ("support",), False),  # user names compare exactly
        ("bob", ("DBA",), False),  # so do group names
    ],
)
def test_approvers_and_the_requester_see_an_approval(user, groups, shown):
    assert may_see(ROW, user, groups) is shown


@pytest.mark.parametrize("approvers", [None, "", "not json", '{"dba": 1}', '"dba"', "[1, null]"])
def test_an_unreadable_approver_list_lets_only_the_requester_see_it(approvers):
    row = {**ROW, "approvers": approvers}
    assert approver_groups(row) == frozenset()
    assert not may_see(row, "dana", ("dba",))
    assert may_see(row, "alice", ())
