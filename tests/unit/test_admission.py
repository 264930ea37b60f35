"""The simulated NIC's admission check: it refuses exactly what the profile does not claim."""

from __future__ import annotations

import dataclasses
import errno

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hwflow.backends.tc import flower as fl
from hwflow.backends.tc import netlink as nl
from hwflow.offload.capabilities import MASK_ANY, MASK_EXACT, MASK_PREFIX, QUIRK_TUNNEL_UDP_DST_PORT, Capabilities
from hwflow.sim import admission
from hwflow.sim.eswitch import Eswitch
from hwflow.sim.profile import Profile, load_profile

PORTS = (101, 102, 103)
BASE = Capabilities({"eth_type": MASK_EXACT, "ip_proto": MASK_EXACT, "ipv4_dst": MASK_PREFIX, "eth_dst": MASK_ANY},
                    frozenset({"redirect", "drop"}), 64)


def rule(keys: fl.FlowerKeys | None = None, actions=(fl.Mirred(102),), chain: int = 0, protocol: int = fl.ETH_P_IP,
         flags: int = 0) -> fl.FlowerRule:
    return fl.FlowerRule(101, 10, 1, protocol, keys or fl.FlowerKeys(ipv4_dst=0x0A000002), tuple(actions),
                         chain=chain, flags=flags)


def refusal(r: fl.FlowerRule, caps: Capabilities = BASE) -> str:
    with pytest.raises(admission.NotAdmitted) as err:
        admission.check(r, caps, PORTS)
    assert err.value.errno == errno.EOPNOTSUPP
    return err.value.what


def test_a_rule_within_the_profile_is_admitted():
    admission.check(rule(), BASE, PORTS)
    admission.check(rule(fl.FlowerKeys(eth_dst=0x010000000000, eth_dst_mask=0x010000000000), protocol=fl.ETH_P_ALL),
                    BASE, PORTS)


@pytest.mark.parametrize("r, what", [
    (rule(flags=fl.TCA_CLS_FLAGS_SKIP_HW), "a skip_hw rule"),
    (rule(fl.FlowerKeys(ipv4_src=1)), "match on ipv4_src with mask 0xffffffff"),
    (rule(fl.FlowerKeys(ipv4_dst=0x0A000001, ipv4_dst_mask=0xFF0000FF)), "match on ipv4_dst with mask 0xff0000ff"),
    (rule(fl.FlowerKeys(ip_proto=6, tcp_dst=80)), "match on tcp_dst"),
    (rule(actions=(fl.Gact("pass"),)), "action pass"),
    (rule(actions=(fl.Mirred(102, redirect=False),)), "action mirred egress mirror"),
    (rule(actions=(fl.Mirred(102, egress=False),)), "action mirred ingress redirect"),
    (rule(actions=(fl.Mirred(999),)), "redirect to ifindex 999 (not a port of this switch)"),
    (rule(actions=(fl.Mirred(102), fl.Gact("drop"))), "2 actions in one rule (max 1)"),
    (rule(actions=(fl.Gact("goto_chain", 1),)), "action goto_chain"),
])
def test_what_the_profile_lacks_is_named(r, what):
    assert what in refusal(r)


def test_eth_type_needs_a_match_field():
    assert refusal(rule(fl.FlowerKeys()), dataclasses.replace(BASE, match_fields={})) == "match on eth_type"


CHAINS = dataclasses.replace(BASE, actions=frozenset({"redirect", "goto_chain"}), max_chains=4,
                             max_actions_per_rule=2)


def test_chains_are_bounded_and_gotos_go_forward():
    admission.check(rule(actions=(fl.Gact("goto_chain", 3),)), CHAINS, PORTS)
    admission.check(rule(chain=3), CHAINS, PORTS)
    assert "goto chain 4 (the profile has chains 0..3)" in refusal(rule(actions=(fl.Gact("goto_chain", 4),)), CHAINS)
    assert "a rule in chain 4" in refusal(rule(chain=4), CHAINS)
    assert "goto from chain 2 to chain 2" in refusal(rule(chain=2, actions=(fl.Gact("goto_chain", 2),)), CHAINS)
    unlimited = dataclasses.replace(CHAINS, max_chains=None)
    admission.check(rule(chain=70000, actions=(fl.Gact("goto_chain", 70001),)), unlimited, PORTS)


@dataclasses.dataclass(frozen=True)
class Teleport:
    """An action some future flower encoder might produce."""


@dataclasses.dataclass(frozen=True)
class FutureSpec:
    """A key spec without an IR field, as a newly added flower key might be."""

    field: str = "enc_key_id"
    width: int = 32


class FutureKeys:
    def items(self):
        return [(FutureSpec(), 5, 0xFFFFFFFF)]


def test_unknown_actions_and_keys_are_refused_by_name():
    fake = rule()
    object.__setattr__(fake, "actions", (Teleport(),))  # past FlowerRule's own type check, as a new class would be
    assert "Teleport (an action hwflow/sim/admission.py does not know)" in refusal(fake)
    keyed = rule()
    object.__setattr__(keyed, "keys", FutureKeys())
    assert refusal(keyed) == "match on flower key enc_key_id (no IR field known for it)"


@dataclasses.dataclass(frozen=True)
class TunnelSpec:
    field: str
    ir_field: str
    width: int


class TunnelKeys:
    def __init__(self, *specs: tuple[str, int]) -> None:
        self.specs = specs

    def items(self):
        return [(TunnelSpec(name, name, 16 if name == "enc_dst_port" else 32), 4789 if name == "enc_dst_port" else 1,
                 mask) for name, mask in self.specs]


def test_tunnel_port_quirk():
    caps = dataclasses.replace(BASE, match_fields={**BASE.match_fields, "enc_key_id": MASK_EXACT,
                                                   "enc_dst_port": MASK_ANY},
                               actions=BASE.actions | {"tunnel_decap"}, tunnel_decap=frozenset({"vxlan"}),
                               quirks=(admission_quirk(),))
    r = rule()
    object.__setattr__(r, "keys", TunnelKeys(("enc_key_id", 0xFFFFFFFF)))
    assert "quirk tunnel_match_needs_udp_dst_port" in refusal(r, caps)
    object.__setattr__(r, "keys", TunnelKeys(("enc_key_id", 0xFFFFFFFF), ("enc_dst_port", 0xFF00)))
    assert "exact enc_dst_port" in refusal(r, caps)
    object.__setattr__(r, "keys", TunnelKeys(("enc_key_id", 0xFFFFFFFF), ("enc_dst_port", 0xFFFF)))
    admission.check(r, caps, PORTS)
    object.__setattr__(r, "keys", TunnelKeys(("enc_key_id", 0xFFFFFFFF)))
    admission.check(r, dataclasses.replace(caps, quirks=()), PORTS)  # without the quirk, no such constraint


def admission_quirk():
    from hwflow.offload.capabilities import quirk

    return quirk(QUIRK_TUNNEL_UDP_DST_PORT, "test")


@given(st.integers(min_value=0, max_value=32), st.sampled_from([MASK_EXACT, MASK_PREFIX, MASK_ANY]))
def test_admission_agrees_with_can_match(length, kind):
    mask = ((1 << length) - 1) << (32 - length)
    caps = dataclasses.replace(BASE, match_fields={"eth_type": MASK_EXACT, "ipv4_dst": kind})
    r = rule(fl.FlowerKeys(ipv4_dst=0x0A000000 & mask, ipv4_dst_mask=mask))
    try:
        admission.check(r, caps, PORTS)
        admitted = True
    except admission.NotAdmitted:
        admitted = False
    assert admitted == caps.can_match("ipv4_dst", mask, 32)


def test_the_eswitch_answers_eopnotsupp_with_the_profile_name_and_enospc_when_full():
    caps = dataclasses.replace(BASE, max_rules=2)
    sw = Eswitch("hwt-nic-sw", Profile("p64", "test", caps), PORTS)
    def add(handle: int) -> nl.Message:
        r = dataclasses.replace(rule(fl.FlowerKeys(ipv4_dst=handle)), handle=handle)
        return nl.split_messages(sw.handle_request(fl.encode_newfilter(r, handle))[0])[0]

    assert [nl.decode_error(add(h))[0] for h in (1, 2)] == [0, 0]
    full = add(3)
    assert nl.decode_error(full)[0] == -errno.ENOSPC
    bad = dataclasses.replace(rule(fl.FlowerKeys(ipv4_src=1)), prio=20)
    code, text = nl.decode_error(nl.split_messages(sw.handle_request(fl.encode_newfilter(bad, 4))[0])[0])
    assert code == -errno.EOPNOTSUPP
    assert text == "simnic hwt-nic-sw: match on ipv4_src with mask 0xffffffff is not supported by profile p64"


# --- the actions and keys beyond redirect/drop, against the family profiles that claim them -----------

MLX5 = load_profile("mlx5-connectx6dx").capabilities
E810 = load_profile("ice-e810").capabilities
PLAIN = load_profile("sim-no-tunnel-no-ct").capabilities
TTL_DEC = fl.Pedit(fl.pedit_set("ip4", 8, b"\xff", "add"))
SET_DMAC = fl.Pedit(fl.pedit_set("eth", 0, bytes.fromhex("020000000009")))
VXLAN = fl.TunnelKey(ipv4_src=0x0A000001, ipv4_dst=0x0A000002, key_id=5, dst_port=4789)
CSUM = fl.Csum(fl.TCA_CSUM_UPDATE_FLAG_IPV4HDR)


def verdict(actions, caps, keys=None, protocol=fl.ETH_P_IP) -> str:
    try:
        admission.check(rule(keys, actions, protocol=protocol), caps, PORTS)
    except admission.NotAdmitted as exc:
        return exc.what
    return "ok"


@pytest.mark.parametrize("actions, mlx5, e810, plain", [
    ((fl.Vlan("push", vid=7), fl.Mirred(102)), "ok", "action vlan_push", "ok"),
    ((fl.Vlan("pop"), fl.Mirred(102)), "ok", "action vlan_pop", "ok"),
    ((fl.Vlan("modify", vid=9), fl.Mirred(102)), "ok", "action rewrite", "rewrite of vlan_vid (vlan modify)"),
    ((VXLAN, fl.Mirred(102)), "ok", "action tunnel_encap", "action tunnel_encap"),  # ice: no tunnel_key
    ((dataclasses.replace(VXLAN, dst_port=7777), fl.Mirred(102)), "tunnel_key set to UDP port 7777", None, None),
    ((fl.TunnelKey(unset=True), fl.Mirred(102)), "ok", "action tunnel_decap", "action tunnel_decap"),
    ((SET_DMAC, fl.Mirred(102)), "ok", "action rewrite", "ok"),
    ((TTL_DEC, CSUM, fl.Mirred(102)), "ok", "3 actions in one rule (max 2)", "ok"),
    ((TTL_DEC, fl.Mirred(102)), "ok", "action ttl_dec", "ok"),
    ((fl.Pedit(fl.pedit_set("ip4", 12, bytes(4))), CSUM, fl.Mirred(102)), "ok", "3 actions in one rule",
     "rewrite of ipv4_src"),
    ((fl.Pedit(fl.pedit_set("ip4", 1, b"\x10")), fl.Mirred(102)), "pedit of ip4 header byte 1", None, None),
    ((CSUM, fl.Mirred(102)), "ok", "action csum", "ok"),
    ((fl.Ct(zone=3, commit=True), fl.Gact("goto_chain", 1)), "ok", "action ct", "action ct"),
    ((fl.Ct(zone=0, nat="src", nat_ipv4_min=1, nat_ipv4_max=1), fl.Gact("goto_chain", 1)), "ok", None, None),
])
def test_families_admit_what_their_drivers_claim(actions, mlx5, e810, plain):
    for caps, expected in ((MLX5, mlx5), (E810, e810), (PLAIN, plain)):
        if expected is not None:
            assert expected in verdict(actions, caps), (caps is MLX5, caps is E810)


def test_conntrack_details_follow_the_profile():
    no_nat = dataclasses.replace(MLX5, conntrack=dataclasses.replace(MLX5.conntrack, nat=False, zones=False))
    assert verdict((fl.Ct(zone=3), fl.Gact("goto_chain", 1)), no_nat) == "ct zone 3"
    assert verdict((fl.Ct(nat="dst", nat_ipv4_min=1, nat_ipv4_max=1), fl.Gact("goto_chain", 1)), no_nat) \
        == "ct zone 0 nat dst"
    est = fl.TCA_FLOWER_KEY_CT_FLAGS_TRACKED | fl.TCA_FLOWER_KEY_CT_FLAGS_ESTABLISHED
    new = fl.TCA_FLOWER_KEY_CT_FLAGS_TRACKED | fl.TCA_FLOWER_KEY_CT_FLAGS_NEW
    ct_keys = fl.FlowerKeys(ct_state=est, ct_state_mask=est)
    assert verdict((fl.Mirred(102),), MLX5, ct_keys) == "ok"
    assert verdict((fl.Mirred(102),), MLX5, fl.FlowerKeys(ct_state=new, ct_state_mask=new)) == \
        "match on ct_state +new +trk"  # mlx5_tc_ct_match_add() refuses +new
    assert verdict((fl.Mirred(102),), E810, ct_keys).startswith("match on ct_state")
    assert verdict((fl.Mirred(102),), no_nat, fl.FlowerKeys(ct_zone=4)) == "match on ct_zone 4"


def test_tunnel_match_keys_and_the_mlx5_port_quirk():
    decap = (fl.TunnelKey(unset=True), fl.Mirred(102))
    without_port = fl.FlowerKeys(enc_key_id=5)
    with_port = fl.FlowerKeys(enc_key_id=5, enc_dst_port=4789)
    assert "quirk tunnel_match_needs_udp_dst_port" in verdict(decap, MLX5, without_port, fl.ETH_P_ALL)
    assert verdict(decap, MLX5, with_port, fl.ETH_P_ALL) == "ok"
    assert verdict(decap, E810, without_port, fl.ETH_P_ALL) == "a tunnel match (decap types: none)"  # no tunnel_key
    assert verdict(decap, PLAIN, with_port, fl.ETH_P_ALL).startswith("match on tun_id")
    geneve = fl.FlowerKeys(enc_key_id=5, enc_dst_port=6081)
    cx5 = load_profile("mlx5-connectx5").capabilities
    assert verdict(decap, cx5, geneve, fl.ETH_P_ALL) == "a geneve match (decap types: gre, vxlan)"
    odd = fl.FlowerKeys(enc_key_id=5, enc_dst_port=9999)
    assert verdict(decap, MLX5, odd, fl.ETH_P_ALL).startswith("a tunnel match on UDP port 9999")


# --- over the whole space of simple rules and profiles: admitted exactly when every part is claimed -----

SIMPLE_KEYS = {  # flower key -> (IR field, width, protocol it needs, extra keys it needs)
    "eth_dst": ("eth_dst", 48, fl.ETH_P_ALL, {}),
    "ipv4_dst": ("ipv4_dst", 32, fl.ETH_P_IP, {}),
    "ipv6_src": ("ipv6_src", 128, fl.ETH_P_IPV6, {}),
}


@st.composite
def simple_rules(draw):
    name = draw(st.sampled_from(sorted(SIMPLE_KEYS)))
    field, width, protocol, extra = SIMPLE_KEYS[name]
    mask = draw(st.one_of(st.just((1 << width) - 1), st.integers(min_value=0, max_value=width).map(
        lambda n: ((1 << n) - 1) << (width - n)), st.integers(min_value=0, max_value=(1 << width) - 1)))
    keys = fl.FlowerKeys(**{name: draw(st.integers(0, (1 << width) - 1)) & mask, f"{name}_mask": mask, **extra})
    actions = draw(st.lists(st.sampled_from([fl.Mirred(102), fl.Gact("drop"), fl.Gact("pass")]), min_size=1,
                            max_size=3))
    return fl.FlowerRule(101, 10, 1, protocol, keys, tuple(actions)), field, mask, width


simple_caps = st.builds(
    lambda fields, actions, per_rule: Capabilities(fields, frozenset(actions), 64, per_rule),
    st.dictionaries(st.sampled_from(["eth_type", "eth_dst", "ipv4_dst", "ipv6_src"]),
                    st.sampled_from([MASK_EXACT, MASK_PREFIX, MASK_ANY])),
    st.sets(st.sampled_from(["redirect", "drop", "pass"])),
    st.integers(min_value=1, max_value=3),
)


@given(simple_rules(), simple_caps)
def test_admitted_exactly_when_every_key_and_action_is_claimed(drawn, caps):
    r, field, mask, width = drawn
    expected = (
        (r.protocol == fl.ETH_P_ALL or caps.can_match("eth_type", 0xFFFF, 16))
        and caps.can_match(field, mask, width)
        and len(r.actions) <= caps.max_actions_per_rule
        and all(admission.action_name(a) in caps.actions for a in r.actions)
    )
    try:
        admission.check(r, caps, PORTS)
        admitted = True
    except admission.NotAdmitted as exc:
        admitted = False
        assert exc.errno == errno.EOPNOTSUPP and exc.what
    assert admitted == expected
