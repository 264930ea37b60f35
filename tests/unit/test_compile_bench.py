"""``hwflow bench compile`` runs (tiny) and models what it says: routers and filtering security groups."""

from __future__ import annotations

import ipaddress

from hwflow import bench
from hwflow.apps.compiler import Compiler, layout_path
from hwflow.bench import compile as compile_bench
from hwflow.pipeline import interpreter, ir
from hwflow.pipeline.topology import Topology

TINY = ["ports=60", "networks=6", "routers=2", "groups=3", "changes=4"]


def test_bench_compile_reports_every_metric():
    module = bench.load("compile")
    results = module.run(bench.parse_params(module.DEFAULTS, TINY), lambda text: None)
    assert {"flows", "full_compile_s", "incremental_median_ms", "rss_mb"} <= set(results)
    assert all(value > 0 for value in results.values())


def test_the_modelled_host_routes_and_filters_with_its_groups_rules():
    nets, ports, others = compile_bench.build(bench.parse_params(compile_bench.DEFAULTS, TINY))
    pipeline = Compiler.from_file(layout_path("")).compile(Topology("b", nets, ports, set(ports), others=others))
    src, same_net, other_net = ports["p6"], ports["p12"], ports["p8"]  # n0, n0, n2: both behind r0
    router_mac = int(others["router_port"]["rp0"].mac.replace(":", ""), 16)

    def tcp(dst, dport: int, eth_dst: int) -> tuple[int, ...]:
        pkt = {"in_port": src.unique_key, "eth_src": int(src.mac.replace(":", ""), 16), "eth_dst": eth_dst,
               "eth_type": ir.ETH_TYPE_IPV4, "ipv4_src": int(ipaddress.IPv4Address(src.ips[0])),
               "ipv4_dst": int(ipaddress.IPv4Address(dst.ips[0])), "ip_proto": 6, "ip_ttl": 64, "tcp_src": 40000,
               "tcp_dst": dport}
        return interpreter.run(pipeline, pkt).ports

    assert tcp(same_net, 22, int(same_net.mac.replace(":", ""), 16)) == (same_net.unique_key,)
    assert tcp(same_net, 23, int(same_net.mac.replace(":", ""), 16)) == ()
    assert tcp(other_net, 8080, router_mac) == (other_net.unique_key,)  # routed by r0, admitted by 8000-8080
    assert tcp(other_net, 8081, router_mac) == ()
