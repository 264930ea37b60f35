"""Every rule the encoder can produce, through the real flower classifier and back.

Per sample rule (see :mod:`hil.checks.rules`): the kernel accepts it, its
NLM_F_ECHO decodes to the rule sent, a dump decodes to the same rule,
iproute2 (a decoder that is not ours) reads the same keys, actions and
flags, and it can be deleted; then the agent's own echo check
(``TcClient(echo=True)``) must accept the kernel's echo of it. Round trips alone cannot catch a mistake the
encoder and decoder share; the iproute2 reading can.
"""

from __future__ import annotations

import dataclasses
import itertools

from hil.checks import host, iproute2
from hil.checks.rules import Sample, all_samples
from hil.suite import Check, CheckFailed
from hwflow.backends.tc import flower as fl
from hwflow.backends.tc import netlink as nl
from hwflow.backends.tc.transport import KernelTransport, TcClient, TcError

ECHO_FLAGS = nl.NLM_F_REQUEST | nl.NLM_F_ACK | nl.NLM_F_CREATE | nl.NLM_F_EXCL | nl.NLM_F_ECHO
TIMEOUT = 10.0  # round trips under TCG take 100-500 ms; a loaded CI machine more
VETH_IN, VETH_OUT = "hilf0", "hilf1"
PLACEHOLDER_IN, PLACEHOLDER_OUT = 1, 2  # samples are built before the devices exist


def add_with_echo(transport: KernelTransport, rule: fl.FlowerRule, seq: int) -> fl.FlowerRule:
    """Add a rule with NLM_F_ECHO; the decoded echo. A refusal raises TcError."""
    transport.send(fl.encode_newfilter(rule, seq, flags=ECHO_FLAGS))
    echo = None
    while True:
        for msg in nl.split_messages(transport.recv(TIMEOUT)):
            if msg.seq != seq:
                continue
            if msg.type == fl.RTM_NEWTFILTER:
                echo, _ = fl.decode_filter_message(msg)
            elif msg.type == nl.NLMSG_ERROR:
                error, text = nl.decode_error(msg)
                if error:
                    raise TcError(-error, text, rule)
                if echo is None:
                    raise CheckFailed(f"{rule.describe()}: acknowledged without the NLM_F_ECHO copy")
                return echo


def expected_actions(rule: fl.FlowerRule, names: dict[int, str]) -> list[tuple]:
    """The rule's actions as iproute2 would describe them (see :func:`hil.checks.iproute2.actions`)."""
    out: list[tuple] = []
    for act in rule.actions:
        if isinstance(act, fl.Mirred):
            out.append(("mirred", "redirect" if act.redirect else "mirror", "egress" if act.egress else "ingress",
                        names.get(act.ifindex, str(act.ifindex))))
        elif isinstance(act, fl.Gact):
            kind = {"drop": "drop", "pass": "pass", "goto_chain": "goto"}[act.verdict]
            out.append(("gact", kind, act.chain))
        elif isinstance(act, fl.Vlan) and act.action != "pop":
            out.append(("vlan", act.action, act.vid, iproute2.protocol_name(act.protocol), act.prio))
        elif isinstance(act, fl.Vlan):
            out.append(("vlan", "pop", None, None, None))
        else:  # tunnel_key, pedit, csum, ct: the kind here; what they do is checked by packets
            out.append((act.KIND,))
    return out


def iproute2_view(dev: str, rule: fl.FlowerRule, names: dict[int, str]) -> None:
    """Compare what iproute2 decodes from the kernel with the rule hwflow meant to install."""
    found = [f for f in host.tc_json("filter", "show", "dev", dev, "ingress")
             if f.get("options") and f.get("pref") == rule.prio and f.get("chain", 0) == rule.chain]
    if len(found) != 1:
        raise CheckFailed(f"iproute2 shows {len(found)} filters at chain {rule.chain} pref {rule.prio} on {dev}")
    entry = found[0]
    options = entry["options"]
    problems = []
    try:
        protocol, seen = iproute2.protocol(entry), iproute2.keys(options, rule)
    except (ValueError, KeyError) as exc:
        raise CheckFailed(f"cannot read iproute2's keys {options.get('keys')}: {exc}") from exc
    if protocol != rule.protocol:
        problems.append(f"protocol {entry.get('protocol')!r}, meant {rule.protocol:#06x}")
    if options.get("handle") != rule.handle:
        problems.append(f"handle {options.get('handle')}, meant {rule.handle}")
    meant = {spec.field: (value, mask) for spec, value, mask in rule.keys.items()}
    for field in sorted(set(seen) | set(meant)):
        if seen.get(field) != meant.get(field):
            problems.append(f"{field}: iproute2 reads {_show(seen.get(field))}, meant {_show(meant.get(field))}")
    if bool(options.get("skip_hw")) != bool(rule.flags & fl.TCA_CLS_FLAGS_SKIP_HW):
        problems.append(f"skip_hw {options.get('skip_hw')}, meant flags {rule.flags:#x}")
    acts_seen, acts_meant = iproute2.actions(options), expected_actions(rule, names)
    if acts_seen != acts_meant:
        problems.append(f"actions: iproute2 reads {acts_seen}, meant {acts_meant}")
    if problems:
        raise CheckFailed("; ".join(problems) + f" (iproute2 keys: {options.get('keys')})")


def _show(pair: tuple[int, int] | None) -> str:
    return "nothing" if pair is None else f"{pair[0]:#x}/{pair[1]:#x}"


@dataclasses.dataclass
class Bench:
    """Two devices to install samples on (rules on ``in_dev``, redirects to ``out_dev``) and kernel clients."""

    in_dev: str
    out_dev: str
    transport: KernelTransport
    client: TcClient
    echo_client: TcClient  # the agent's NLM_F_ECHO check (TcClient(echo=True)), against the kernel's echo
    seqs: itertools.count

    @classmethod
    def on(cls, in_dev: str, out_dev: str) -> Bench:
        host.clsact(in_dev)
        return cls(in_dev, out_dev, KernelTransport(), TcClient(KernelTransport(), timeout=TIMEOUT),
                   TcClient(KernelTransport(), timeout=TIMEOUT, echo=True), itertools.count(1000))

    @classmethod
    def veths(cls) -> Bench:
        """A fresh veth pair: the VM's stand-in for two representors."""
        host.delete_link(VETH_IN)
        host.veth(VETH_IN, VETH_OUT)
        return cls.on(VETH_IN, VETH_OUT)

    @property
    def names(self) -> dict[int, str]:
        return {host.ifindex(self.in_dev): self.in_dev, host.ifindex(self.out_dev): self.out_dev}

    def place(self, rule: fl.FlowerRule, flags: int | None = None) -> fl.FlowerRule:
        """A sample built on the placeholder ifindexes, moved onto the bench's devices (and flags)."""
        where = {PLACEHOLDER_IN: host.ifindex(self.in_dev), PLACEHOLDER_OUT: host.ifindex(self.out_dev)}
        actions = tuple(dataclasses.replace(a, ifindex=where[a.ifindex]) if isinstance(a, fl.Mirred) else a
                        for a in rule.actions)
        return dataclasses.replace(rule, ifindex=where[rule.ifindex], actions=actions,
                                   flags=rule.flags if flags is None else flags)

    def close(self) -> None:
        self.transport.close()
        self.client.close()
        self.echo_client.close()


def round_trip(bench: Bench, rule: fl.FlowerRule) -> None:
    """Add (echo), dump, iproute2 view, delete: each step must give back the rule sent."""
    try:
        echo = add_with_echo(bench.transport, rule, next(bench.seqs))
    except TcError as exc:
        raise CheckFailed(f"the kernel refused it: {exc}") from exc
    try:
        if echo != rule:
            raise CheckFailed(f"NLM_F_ECHO decodes to {echo}, sent {rule}")
        dumped = [r for r, _ in bench.client.dump(rule.ifindex)
                  if (r.chain, r.prio, r.handle) == (rule.chain, rule.prio, rule.handle)]
        if dumped != [rule]:
            raise CheckFailed(f"dump decodes to {dumped}, sent {rule}")
        iproute2_view(bench.in_dev, rule, bench.names)
    finally:
        errors = bench.client.delete([rule])
    if errors[0] is not None:
        raise CheckFailed(f"delete refused: {errors[0]}")
    left = [r for r, _ in bench.client.dump(rule.ifindex) if (r.chain, r.prio) == (rule.chain, rule.prio)]
    if left:
        raise CheckFailed(f"still dumped after delete: {left}")
    (err,) = bench.echo_client.add([rule])
    bench.client.delete([rule])
    if err is not None:
        raise CheckFailed(f"TcClient(echo=True) refuses the kernel's echo of it: {err}")


def skip_sw_refused(bench: Bench) -> None:
    """skip_sw on a device with no offload must be refused, and TcClient must say so with the rule."""
    rule = fl.FlowerRule(host.ifindex(bench.in_dev), 900, 900, fl.ETH_P_IP, fl.FlowerKeys(), (fl.Gact("drop"),),
                         flags=fl.TCA_CLS_FLAGS_SKIP_SW)
    (err,) = bench.client.add([rule])
    if err is None:
        bench.client.delete([rule])
        raise CheckFailed(f"the kernel accepted skip_sw on {bench.in_dev}, a veth with no offload")
    if rule.describe() not in str(err):
        raise CheckFailed(f"the refusal does not name the rule: {err}")


def checks() -> list[Check]:
    """One check per sample rule; the bench is set up by the first check that runs, so a setup
    failure is a failed check rather than a crashed suite."""
    opened: list[Bench] = []

    def bench() -> Bench:
        if not opened:
            opened.append(Bench.veths())
        return opened[0]

    def check(sample: Sample) -> Check:
        def run() -> None:
            if sample.rule is None:
                raise CheckFailed(sample.problem or "no sample rule")
            b = bench()
            round_trip(b, b.place(sample.rule))

        return Check(f"flower {sample.name}", run)

    out = [check(sample) for sample in all_samples(PLACEHOLDER_IN, PLACEHOLDER_OUT)]
    out.append(Check("flower skip_sw on a device without offload is refused, naming the rule",
                     lambda: skip_sw_refused(bench())))
    return out
