"""Active probing against the simulated NIC's eswitch: it learns each profile, and never leaves a rule behind."""

from __future__ import annotations

import dataclasses
import errno
import json

import pytest

from hwflow.backends.tc import flower as fl
from hwflow.backends.tc.probe import FLOWER, GUARD_SRC, PROBE_CHAIN, Prober, not_probed_claims, probe_candidates
from hwflow.backends.tc.transport import TcClient
from hwflow.offload.capabilities import MASK_ANY, MASK_EXACT, MASK_PREFIX, Capabilities
from hwflow.offload.nic import NetDevice
from hwflow.offload.probe import CONFIRMED, NOT_PROBED, REFUSED, ProbeCache, ProbeReport, ProbeResult, age_text
from hwflow.sim.eswitch import Eswitch
from hwflow.sim.profile import Profile, load_profile, profile_names
from hwflow_drivers.generic import GENERIC_SWITCHDEV, PROBE_CANDIDATES, GenericDriver

REP, OTHER = 21, 22


class EswitchTransport:
    """The simulated NIC's own request handler, in process: the same bytes its socket would carry."""

    def __init__(self, eswitch: Eswitch) -> None:
        self.eswitch = eswitch
        self.replies: list[bytes] = []
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sent.append(data)
        self.replies.extend(self.eswitch.handle_request(data))

    def recv(self, timeout: float) -> bytes:
        if not self.replies:
            raise TimeoutError("no reply")
        return self.replies.pop(0)

    def close(self) -> None:
        pass


def prober(caps: Capabilities, clock=lambda: 1000.0) -> tuple[Prober, Eswitch, EswitchTransport]:
    switch = Eswitch("hwt-nic-probe", Profile("p", "test", caps), [REP, OTHER])
    transport = EswitchTransport(switch)
    return Prober(TcClient(transport), REP, clock), switch, transport


def sent_rules(transport: EswitchTransport) -> list[fl.FlowerRule]:
    from hwflow.backends.tc import netlink as nl

    out = []
    for data in transport.sent:
        for msg in nl.split_messages(data):
            if msg.type == fl.RTM_NEWTFILTER:
                out.append(fl.decode_filter_message(msg)[0])
    return out


@pytest.mark.parametrize("name", profile_names())
def test_probing_learns_what_each_profile_allows_and_leaves_nothing(name):
    caps = load_profile(name).capabilities
    probe, switch, transport = prober(caps)
    report = probe.run("rep", PROBE_CANDIDATES)
    assert switch.rule_count == 0  # every probe rule was removed at once
    learned = report.learned(PROBE_CANDIDATES)
    maskable = {s.ir_field for s in fl.KEY_SPECS if s.mask_field} | {"eth_type"}
    for field in PROBE_CANDIDATES.match_fields:
        claimed = caps.match_fields.get(field)
        expected = claimed if field in maskable or claimed is None else MASK_EXACT
        assert learned.match_fields.get(field) == expected, field
        if field not in maskable and claimed is not None:
            assert report.status(f"match {field} masked") == NOT_PROBED
    assert learned.actions == caps.actions & PROBE_CANDIDATES.actions
    assert learned.tunnel_encap == caps.tunnel_encap & {"vxlan", "geneve"}
    assert learned.tunnel_decap == caps.tunnel_decap & {"vxlan", "geneve"}
    assert learned.rewrite_fields == caps.rewrite_fields
    assert learned.conntrack == caps.conntrack
    assert learned.max_chains == {None: None, 1: 1}.get(caps.max_chains, 2)
    assert learned.max_actions_per_rule == (4 if caps.max_actions_per_rule >= 4 else 1)
    assert report.status("capacity") == NOT_PROBED
    for rule in sent_rules(transport):  # never a rule that could meet traffic
        assert rule.flags == fl.TCA_CLS_FLAGS_SKIP_SW and rule.prio == 0xFFFF
        guarded = rule.keys.eth_src is not None and rule.keys.eth_src & (1 << 40)
        assert rule.chain == PROBE_CHAIN or guarded, rule


def test_chain0_device_is_probed_behind_the_guard():
    probe, _, transport = prober(load_profile("ice-e810").capabilities)
    report = probe.run("rep", PROBE_CANDIDATES)
    assert "chain 0" in report.placement and "guard" in report.placement
    assert report.status("chains") == REFUSED
    assert all(r.keys.eth_src is not None for r in sent_rules(transport) if r.chain == 0)
    assert GUARD_SRC & (1 << 40)


def test_a_device_with_no_safe_place_is_not_probed():
    caps = Capabilities({"eth_dst": MASK_EXACT}, frozenset({"drop"}), 8, max_chains=1)
    probe, switch, _ = prober(caps)
    with pytest.raises(Exception, match="no place for probe rules that cannot touch traffic"):
        probe.run("rep", PROBE_CANDIDATES)
    assert switch.rule_count == 0


def test_masks_are_told_apart():
    caps = Capabilities({"eth_type": MASK_EXACT, "ipv4_dst": MASK_PREFIX, "eth_dst": MASK_ANY, "ipv4_src": MASK_EXACT},
                        frozenset({"drop"}), 8)
    report = prober(caps)[0].run("rep", PROBE_CANDIDATES)
    learned = report.learned(PROBE_CANDIDATES)
    assert learned.match_fields == {"eth_type": MASK_EXACT, "ipv4_dst": MASK_PREFIX, "eth_dst": MASK_ANY,
                                    "ipv4_src": MASK_EXACT}
    assert report.status("match ipv4_dst any") == REFUSED
    refused = next(r for r in report.results if r.claim == "match ipv4_dst any")
    assert "match on ipv4_dst with mask 0x55555555 is not supported" in refused.detail


def test_claims_no_probe_can_cover_are_named():
    caps = load_profile("mlx5-connectx6dx").capabilities
    encodable = {s.ir_field for s in fl.KEY_SPECS} | {"eth_type"}
    unencodable = {f"match {f}" for f in caps.match_fields if f not in encodable}
    assert set(not_probed_claims(caps)) == {"tunnel_encap gre", "tunnel_decap gre"} | unencodable
    report = prober(caps)[0].run("rep", caps)
    assert report.status("tunnel_encap gre") == NOT_PROBED and report.status("tunnel_encap geneve") == CONFIRMED
    assert report.status("action redirect") == CONFIRMED and report.status("counters") == CONFIRMED
    assert report.status("match ct_state +est") == CONFIRMED and report.status("ct nat") == CONFIRMED


def test_candidates_widen_the_claims_and_keep_the_capacity_claimed():
    claimed = load_profile("ice-e810").capabilities
    wide = probe_candidates(claimed)
    assert wide.max_rules == claimed.max_rules and wide.max_chains is None
    assert wide.match_fields.items() >= claimed.match_fields.items() and "tcp_dst" in wide.match_fields
    assert wide.actions >= claimed.actions | {"ct", "goto_chain"} and wide.tunnel_encap >= claimed.tunnel_encap
    assert not_probed_claims(wide) == not_probed_claims(claimed)  # the widening asks only what a probe can


def test_cache_round_trip_age_and_corruption(tmp_path):
    cache = ProbeCache(tmp_path / "probes")
    assert cache.load("rep") is None
    report = ProbeReport("rep", 1000.0, "chain 1", (ProbeResult("action drop", CONFIRMED),))
    path = cache.save(report)
    assert json.loads(path.read_text())["taken_at"] == 1000.0
    assert cache.load("rep") == report
    assert report.age(now=1130.0) == 130.0 and age_text(130.0) == "2m"
    assert [age_text(s) for s in (5, 7200, 200000)] == ["5s", "2h", "2d"]
    path.write_text("{")
    with pytest.raises(ValueError, match=f"probe cache {path}"):
        cache.load("rep")
    path.write_text(json.dumps({**report.to_dict(), "results": [{"claim": "x", "status": "maybe"}]}))
    with pytest.raises(ValueError, match="unknown status"):
        cache.load("rep")


def rep_device() -> NetDevice:
    return NetDevice("hwt-nic-rep", 21, "mlx5_core", "15b3:1017", "0000:03:00.0", "abcd", "pf0vf0", True, "pci",
                     "switchdev")


def test_generic_driver_learns_from_the_cache(tmp_path):
    cache = ProbeCache(tmp_path)
    driver = GenericDriver(cache)
    before = driver.describe(rep_device())
    assert before.capabilities == GENERIC_SWITCHDEV and "not probed" in before.capability_source
    report = prober(load_profile("sim-basic").capabilities, clock=lambda: 0.0)[0].run("hwt-nic-rep",
                                                                                   PROBE_CANDIDATES)
    cache.save(dataclasses.replace(report, switch_id="abcd"))
    after = driver.describe(rep_device())
    assert after.capabilities == report.learned(PROBE_CANDIDATES)
    assert after.capabilities.can_match("ipv4_dst", 0xFFFFFF00, 32)
    assert after.capability_source.startswith("probed ") and "ago" in after.capability_source
    cache.save(dataclasses.replace(report, switch_id="another"))
    moved = driver.describe(rep_device())
    assert moved.capabilities == GENERIC_SWITCHDEV
    assert "is of eswitch another, not abcd: probe again" in moved.capability_source
    cache.path("hwt-nic-rep").write_text("garbage")
    broken = driver.describe(rep_device())
    assert broken.capabilities == GENERIC_SWITCHDEV and "remove it and probe again" in broken.capability_source


class FlowerRefusingTransport(EswitchTransport):
    """A device that refuses every hardware flower rule for one reason, as netdevsim does (the VM tier checks the
    real one): "netdevsim: only offload of BPF classifiers supported"."""

    REASON = "only offload of BPF classifiers supported"

    def send(self, data: bytes) -> None:
        from hwflow.backends.tc import netlink as nl

        self.sent.append(data)
        for msg in nl.split_messages(data):
            refusal = errno.EOPNOTSUPP if msg.type == fl.RTM_NEWTFILTER else errno.ENOENT
            self.replies.append(nl.encode_error(msg, -refusal, self.REASON))


def test_a_device_that_refuses_flower_itself_is_reported_so_with_its_reason(tmp_path):
    transport = FlowerRefusingTransport(Eswitch("hwt-nic-nsim", load_profile("sim-basic"), [REP, OTHER]))
    report = Prober(TcClient(transport), REP, lambda: 1000.0).run(rep_device().name, PROBE_CANDIDATES)
    assert report.status(FLOWER) == REFUSED and "none" in report.placement
    assert FlowerRefusingTransport.REASON in report.results[0].detail
    cache = ProbeCache(tmp_path)
    cache.save(report)
    described = GenericDriver(cache).describe(rep_device())
    assert not described.offload and FlowerRefusingTransport.REASON in described.reason
