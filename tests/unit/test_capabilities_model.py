"""The capability model: questions the partitioner asks, the JSON form, and what it refuses to hold."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hwflow.offload.capabilities import (
    ACTION_CT,
    ACTION_GOTO_CHAIN,
    ACTION_REDIRECT,
    ACTION_REWRITE,
    ACTION_TUNNEL_DECAP,
    ACTION_TUNNEL_ENCAP,
    CHAIN_MISSES,
    CT_STATES,
    HW_ACTIONS,
    MASK_ANY,
    MASK_EXACT,
    MASK_KINDS,
    MASK_PREFIX,
    NO_OFFLOAD,
    QUIRK_TUNNEL_UDP_DST_PORT,
    QUIRKS,
    SCHEMA,
    TUNNEL_TYPES,
    Capabilities,
    CapabilitiesError,
    Conntrack,
    quirk,
)

TOP_KEYS = {"match_fields", "actions", "max_rules", "max_actions_per_rule", "max_chains", "chain_miss", "counters",
            "tunnel_encap", "tunnel_decap", "rewrite_fields", "conntrack", "quirks"}
FIELDS = ("eth_src", "eth_dst", "eth_type", "vlan_vid", "ipv4_src", "ipv4_dst", "ip_ttl", "tcp_dst")
names = st.frozensets


@st.composite
def capabilities(draw) -> Capabilities:
    """Any self-consistent Capabilities: qualifiers present exactly when their action is."""
    actions = set(draw(names(st.sampled_from(HW_ACTIONS))))
    qualified = {
        "tunnel_encap": (ACTION_TUNNEL_ENCAP, TUNNEL_TYPES),
        "tunnel_decap": (ACTION_TUNNEL_DECAP, TUNNEL_TYPES),
        "rewrite_fields": (ACTION_REWRITE, FIELDS),
    }
    extra = {key: draw(names(st.sampled_from(choices), min_size=1)) if action in actions else frozenset()
             for key, (action, choices) in qualified.items()}
    conntrack = None
    if ACTION_CT in actions:
        conntrack = Conntrack(draw(names(st.sampled_from(CT_STATES))), draw(st.booleans()), draw(st.booleans()))
    chains = draw(st.one_of(st.none(), st.integers(min_value=2 if ACTION_GOTO_CHAIN in actions else 1,
                                                   max_value=1 << 32)))
    return Capabilities(
        match_fields=draw(st.dictionaries(st.sampled_from(FIELDS), st.sampled_from(MASK_KINDS))),
        actions=frozenset(actions),
        max_rules=draw(st.integers(min_value=0, max_value=1 << 24)),
        max_actions_per_rule=draw(st.integers(min_value=1, max_value=32)),
        max_chains=chains,
        chain_miss=draw(st.sampled_from(CHAIN_MISSES)),
        counters=draw(st.booleans()),
        conntrack=conntrack,
        quirks=tuple(quirk(n, "https://example.org/doc") for n in draw(names(st.sampled_from(sorted(QUIRKS))))),
        **extra,
    )


@given(capabilities())
def test_json_round_trip_is_exact_and_plain(caps):
    text = json.dumps(caps.to_dict())
    assert Capabilities.from_dict(json.loads(text)) == caps
    assert set(caps.to_dict()) == TOP_KEYS


def test_schema_documents_every_key():
    for key in TOP_KEYS:
        assert f'"{key}"' in SCHEMA, key
    for action in HW_ACTIONS:
        assert action in SCHEMA, action


def test_documents_without_the_new_keys_still_parse():
    """Profiles and chassis records written before the model grew keep their meaning."""
    old = {"match_fields": {"eth_dst": "exact"}, "actions": ["redirect"], "max_rules": 8,
           "max_actions_per_rule": 1}
    caps = Capabilities.from_dict(old)
    assert caps.max_chains is None and not caps.counters and caps.conntrack is None and caps.quirks == ()
    assert caps == Capabilities({"eth_dst": "exact"}, frozenset({"redirect"}), 8)


MASK_CASES = [
    (MASK_EXACT, 0xFFFFFFFF, True), (MASK_EXACT, 0xFFFFFF00, False), (MASK_EXACT, 0x0F0F0F0F, False),
    (MASK_PREFIX, 0xFFFFFFFF, True), (MASK_PREFIX, 0xFFFFFF00, True), (MASK_PREFIX, 0, True),
    (MASK_PREFIX, 0x0F0F0F0F, False), (MASK_PREFIX, 0xFFFF00FF, False),
    (MASK_ANY, 0x0F0F0F0F, True), (MASK_ANY, 0, True),
]


@pytest.mark.parametrize("kind, mask, ok", MASK_CASES)
def test_mask_kinds(kind, mask, ok):
    assert Capabilities({"ipv4_dst": kind}, frozenset(), 1).can_match("ipv4_dst", mask, 32) is ok


@given(st.integers(min_value=0, max_value=32))
def test_every_prefix_fits_a_prefix_field(length):
    mask = ((1 << length) - 1) << (32 - length)
    assert Capabilities({"ipv4_src": MASK_PREFIX}, frozenset(), 1).can_match("ipv4_src", mask, 32)


def test_unlisted_field_never_matches():
    assert not Capabilities({"eth_dst": MASK_ANY}, frozenset(), 1).can_match("eth_src", (1 << 48) - 1, 48)


def test_qualified_questions():
    caps = Capabilities(
        {}, frozenset({ACTION_TUNNEL_ENCAP, ACTION_CT, ACTION_REWRITE}), 10,
        tunnel_encap=frozenset({"vxlan"}), rewrite_fields=frozenset({"eth_dst"}),
        conntrack=Conntrack(frozenset({"trk", "est"}), zones=False, nat=True),
        quirks=(quirk(QUIRK_TUNNEL_UDP_DST_PORT, "src"),),
    )
    assert caps.can_encap("vxlan") and not caps.can_encap("geneve") and not caps.can_decap("vxlan")
    assert caps.can_rewrite("eth_dst") and not caps.can_rewrite("ipv4_dst")
    assert caps.can_conntrack({"trk", "est"}) and caps.can_conntrack(nat=True)
    assert not caps.can_conntrack({"new"}) and not caps.can_conntrack(zone=5)
    assert not NO_OFFLOAD.can_conntrack()
    assert caps.has_quirk(QUIRK_TUNNEL_UDP_DST_PORT) and not NO_OFFLOAD.has_quirk(QUIRK_TUNNEL_UDP_DST_PORT)


BAD = [
    ({"actions": ["teleport"]}, "unknown action(s) ['teleport']"),
    ({"match_fields": {"eth_dst": "some"}}, "unknown mask kind(s) {'eth_dst': 'some'}"),
    ({"actions": ["tunnel_encap"]}, "tunnel_encap lists tunnel types exactly when actions has 'tunnel_encap'"),
    ({"tunnel_decap": ["vxlan"]}, "tunnel_decap lists tunnel types exactly when actions has 'tunnel_decap'"),
    ({"actions": ["tunnel_encap"], "tunnel_encap": ["ipip"]}, "unknown tunnel type(s) ['ipip']"),
    ({"actions": ["rewrite"]}, "rewrite_fields lists fields exactly when actions has 'rewrite'"),
    ({"actions": ["ct"]}, "conntrack is an object exactly when actions has 'ct'"),
    ({"actions": ["ct"], "conntrack": {"states": ["weird"], "zones": True, "nat": False}},
     "conntrack: unknown state(s) ['weird']"),
    ({"conntrack": {"states": [], "zone": True}}, "conntrack must be null or {states, zones, nat}"),
    ({"actions": ["goto_chain"], "max_chains": 1}, "'goto_chain' needs more than one chain"),
    ({"max_rules": -1}, "max_rules must be at least 0"),
    ({"max_rules": "many"}, "max_rules must be an integer"),
    ({"max_actions_per_rule": 0}, "max_actions_per_rule must be at least 1"),
    ({"counters": "yes"}, "counters must be true or false"),
    ({"actions": "redirect"}, "actions must be a list of names"),
    ({"quirks": [{"name": "moody", "description": "d", "source": "s"}]}, "unknown quirk(s) ['moody']"),
    ({"quirks": [{"name": "x"}]}, "each quirk is {name, description, source}"),
    ({"max_rule": 5}, "unknown key(s) ['max_rule']"),
]


@pytest.mark.parametrize("doc, message", BAD)
def test_bad_documents_are_refused_with_the_reason(doc, message):
    with pytest.raises(CapabilitiesError) as err:
        Capabilities.from_dict({"max_rules": 1, **doc})
    assert message in str(err.value)


def test_a_contradiction_is_refused_at_construction_too():
    with pytest.raises(CapabilitiesError, match="conntrack is an object exactly when"):
        Capabilities({}, frozenset({ACTION_REDIRECT}), 1, conntrack=Conntrack(frozenset(), False, False))


def test_an_unknown_chain_miss_behaviour_is_refused_by_name():
    with pytest.raises(CapabilitiesError, match="chain_miss 'sometimes' is not one of"):
        Capabilities.from_dict({"match_fields": {}, "actions": [], "max_rules": 1, "chain_miss": "sometimes"})
    assert Capabilities.from_dict({"match_fields": {}, "actions": [], "max_rules": 1}).chain_miss == "continue"
