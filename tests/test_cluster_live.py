"""Cluster selection, concurrent connection and survey against real erl nodes."""

from __future__ import annotations

import pytest

from kzbridge.errors import CookieRejectedError, UsageError
from kzbridge.kazoo import cluster


def test_parse_node_list_and_excludes() -> None:
    assert cluster.parse_node_list(["a@h,b@h", " c@h ", "a@h"]) == ["a@h", "b@h", "c@h"]
    with pytest.raises(UsageError):
        cluster.parse_node_list(["nohost"])
    nodes = ["kazoo_apps@kz1", "ecallmgr@kz1", "kazoo_apps@kz2", "ecallmgr@kz2"]
    assert cluster.apply_excludes(nodes, ["ecallmgr@*"]) == ["kazoo_apps@kz1", "kazoo_apps@kz2"]
    assert cluster.apply_excludes(nodes, ["*@kz2", "ecallmgr@kz1"]) == ["kazoo_apps@kz1"]


@pytest.mark.asyncio
async def test_discovery_without_kz_nodes_uses_nodes_and_epmd(make_erl_node, open_node) -> None:
    a = make_erl_node()
    b = make_erl_node(cookie=a.cookie)
    found = await cluster.discover(await open_node(a))
    assert found.source == "nodes+epmd"
    assert found.nodes[0] == a.node
    assert b.node in found.nodes
    assert not any(n.startswith("kzbridge_") for n in found.nodes)


@pytest.mark.asyncio
async def test_connect_all_is_concurrent_and_reports_failures_by_name(make_erl_node) -> None:
    nodes = [make_erl_node() for _ in range(3)]
    cookies = {n.node: n.cookie for n in nodes}
    cookies[nodes[2].node] = "wrong-cookie"
    missing = "nosuchnode@127.0.0.1"
    cookies[missing] = "x"
    names = [n.node for n in nodes] + [missing]

    conns = await cluster.connect_all(names, cookies.__getitem__, timeout=5)
    try:
        reports = await cluster.survey(conns)
    finally:
        await conns.close()
    assert set(conns.failed) == {nodes[2].node, missing}
    assert isinstance(conns.failed[nodes[2].node], CookieRejectedError)
    by_node = {r.node: r for r in reports}
    assert [r.node for r in reports] == names
    for n in nodes[:2]:
        r = by_node[n.node]
        assert r.answered and r.otp.isdigit() and r.generation is None and "kz_data_tracing" in r.error
        assert r.clock is not None and abs(r.clock.offset) < 0.5 and r.clock.uncertainty < 0.05
    assert not by_node[nodes[2].node].answered and "cookie" in by_node[nodes[2].node].error
    assert not by_node[missing].answered
