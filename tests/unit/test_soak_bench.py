"""hwflow.bench.soak's leftover check: a rule or flow of a churned port is found by each of the marks it can
carry (representor, MAC, owner cookie, OpenFlow port), and the baseline's are not taken for one."""

from __future__ import annotations

import pytest

from hwflow.backends.ovs import translate
from hwflow.backends.tc import flower as fl
from hwflow.bench import soak

CHURNED_MAC = 0xFA163E5A0001
BASELINE_MAC = 0xFA163E005001
CHURNED_REP, BASELINE_REP = 40, 30
CHURNED_OFPORT, REUSED_OFPORT, BASELINE_OFPORT = 9, 3, 2


def churn() -> soak.Churn:
    state = soak.Churn(None, None, "net", "sg", seed=0, max_ports=1)  # type: ignore[arg-type]  # not stepped
    state.macs, state.ids = {CHURNED_MAC}, {"p-churned"}
    state.ifindexes, state.ofports = {CHURNED_REP}, {CHURNED_OFPORT, REUSED_OFPORT}
    return state


def rule(ifindex: int = BASELINE_REP, to: int = BASELINE_REP + 1, eth_dst: int = BASELINE_MAC) -> fl.FlowerRule:
    return fl.FlowerRule(ifindex=ifindex, prio=1, handle=1, protocol=fl.ETH_P_IP, keys=fl.FlowerKeys(eth_dst=eth_dst),
                         actions=(fl.Mirred(to),))


def flow(cookie: int = translate.owner_cookie("port:p-baseline"), eth_dst: int = BASELINE_MAC,
         in_port: int = BASELINE_OFPORT, output: int = BASELINE_OFPORT + 1) -> tuple:
    match = (("eth_dst", eth_dst, 2**48 - 1), ("in_port", in_port, 2**32 - 1))
    return (0, 100, match, (("apply", (("output", output),)),), cookie)


def left(rules: list[fl.FlowerRule], flows: list[tuple]) -> tuple[int, int]:
    return soak.leftovers(soak.Contents(set(rules), set(flows)), churn(), baseline_ofports={BASELINE_OFPORT,
                                                                                        REUSED_OFPORT})


def test_the_baselines_rules_and_flows_are_no_leftovers() -> None:
    assert left([rule()], [flow()]) == (0, 0)


@pytest.mark.parametrize("leftover", [rule(ifindex=CHURNED_REP), rule(to=CHURNED_REP), rule(eth_dst=CHURNED_MAC)],
                         ids=["on-its-representor", "redirecting-to-it", "its-mac"])
def test_a_rule_of_a_churned_port_is_a_leftover(leftover: fl.FlowerRule) -> None:
    assert left([rule(), leftover], [flow()]) == (1, 0)


@pytest.mark.parametrize("leftover", [flow(cookie=translate.owner_cookie("port:p-churned")),
                                      flow(eth_dst=CHURNED_MAC), flow(in_port=CHURNED_OFPORT),
                                      flow(output=CHURNED_OFPORT)],
                         ids=["its-cookie", "its-mac", "from-its-ofport", "to-its-ofport"])
def test_a_flow_of_a_churned_port_is_a_leftover(leftover: tuple) -> None:
    assert left([rule()], [flow(), leftover]) == (0, 1)


def test_an_ofport_a_baseline_vm_holds_now_is_no_mark_of_a_churned_port() -> None:
    assert left([], [flow(in_port=REUSED_OFPORT)]) == (0, 0)
