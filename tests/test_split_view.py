"""A server that shows two applicants two different histories (a split view) is caught (protocol 8.7, 8.9).

A compromised server (or M colluding admins) signs two valid directory
version 2s and shows one to each client. Each client accepts its own branch
(it cannot know better alone), but the moment either is shown the other's head
- by the server later picking one branch, or by the two heads meeting through
a witness or an auditor - the client refuses with Fork and keeps its state.
"""

from __future__ import annotations

import pytest

from safepassage.crypto.errors import Fork

from .fake_intake import honest_view
from .helpers import Org
from .test_client_trust import ORG, SIGNERS, chain, fetch

V1 = chain(1)[0]
BRANCH_A = [V1, ORG.signed(ORG.directory(version=2, organisation="Shown to A"))]
BRANCH_B = [V1, ORG.signed(ORG.directory(version=2, organisation="Shown to B"), Org().admins[1:])]


def test_each_client_catches_the_split_as_soon_as_it_sees_the_other_head() -> None:
    a = fetch(honest_view(BRANCH_A, SIGNERS))
    b = fetch(honest_view(BRANCH_B, SIGNERS))
    assert a.directory.organisation == "Shown to A"
    assert b.directory.organisation == "Shown to B"
    assert a.state.head.size == b.state.head.size
    assert a.state.head.root != b.state.head.root

    # The server can keep the split only by never showing A what B saw: once it does, A stops.
    with pytest.raises(Fork):
        fetch(honest_view(BRANCH_B, SIGNERS), a.state)
    with pytest.raises(Fork):
        fetch(honest_view(BRANCH_A, SIGNERS), b.state)


def test_growing_either_branch_later_still_forks_the_other_client() -> None:
    a = fetch(honest_view(BRANCH_A, SIGNERS))
    b = fetch(honest_view(BRANCH_B, SIGNERS))
    # The server settles on branch A and appends version 3: A moves on, B is caught.
    grown = [*BRANCH_A, ORG.signed(ORG.directory(version=3, organisation="Later"))]
    assert fetch(honest_view(grown, SIGNERS), a.state).directory.version == 3
    with pytest.raises(Fork):
        fetch(honest_view(grown, SIGNERS), b.state)


def test_the_refusing_client_keeps_its_remembered_head() -> None:
    b = fetch(honest_view(BRANCH_B, SIGNERS))
    with pytest.raises(Fork):
        fetch(honest_view(BRANCH_A, SIGNERS), b.state)
    # Nothing was replaced: the same view as before is still accepted, the other still refused.
    assert fetch(honest_view(BRANCH_B, SIGNERS), b.state).state.head == b.state.head
