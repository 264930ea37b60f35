"""Traffic per port, and the rank that gives a NIC short of room to the busiest ports (issue 15, part 4).

When a NIC cannot hold every rule the partitioner could give it, it serves the ports in the order of a rank
(hwflow.offload.partition: port -> priority, highest first, ties in key order). The agent makes that rank
from what each port sends, measured on both datapaths at every report (the metrics' reading,
:meth:`hwflow.agent.metrics.AgentMetrics.traffic`: packets the NIC's rules on the port's representor ended,
plus packets OVS received from the representor), as a rate in packets a second decayed over time
(:class:`TrafficRates`, half-life ``[offload] traffic_half_life``).

Hysteresis (:func:`priorities`): the new order is the order the plan was made in, with a port moved above
another only when it sends more than ``[offload] traffic_hysteresis`` times as many packets a second, plus
:data:`IDLE` (adjacent swaps, repeated until none applies). So a port holding room keeps it unless another is
that much busier, two ports of about the same traffic never trade places back and forth, idle ports never
trade places at all, and at steady rates one re-rank reaches the order the next would keep. A port the last
rank did not name (new since) starts below those it did, in key order; tunnel devices and uplinks (not
measured) rank after every measured port, in key order, as the partitioner takes ports a rank leaves out. The
agent looks at the rank at most once a report, and plans again only when it
moves room (``Partitioner.moves``); moving rules is make-before-break like any plan change (the port losing
room is back on OVS, which holds the whole pipeline, before the gaining port's rules go in).
"""

from __future__ import annotations

from collections.abc import Mapping

IDLE = 1.0  # packets a second a port must send beyond ``factor`` times another's to go above it


class TrafficRates:
    """Packets a second per port, an exponentially decayed average: a sample ``dt`` seconds after the one before
    weighs ``1 - 2 ** (-dt / half_life)``, so a port's rate halves every ``half_life`` seconds once it goes quiet,
    however often it is sampled."""

    def __init__(self, half_life: float) -> None:
        if half_life <= 0:
            raise ValueError(f"half_life must be positive, not {half_life}")
        self.half_life = half_life
        self.rates: dict[int, float] = {}
        self._at: float | None = None  # when the last sample was taken

    def observe(self, packets: Mapping[int, int], now: float) -> None:
        """Take a sample: ``packets`` each port sent since the one before (every port measured: a port it does not
        name is gone), at ``now`` (seconds, monotonic). The first sample only sets the clock (its counts are since
        a time unknown)."""
        before, self._at = self._at, now
        if before is None:
            self.rates = dict.fromkeys(packets, 0.0)
            return
        elapsed = now - before
        if elapsed <= 0:
            return
        keep = 2.0 ** (-elapsed / self.half_life)
        self.rates = {port: self.rates.get(port, 0.0) * keep + (1.0 - keep) * count / elapsed
                      for port, count in packets.items()}


def priorities(rates: Mapping[int, float], before: Mapping[int, float], factor: float) -> dict[int, float]:
    """The rank to give the partitioner (port -> priority, highest first): the ports of ``rates`` in the order of
    the rank ``before`` (the one the plan was made with; highest first, then by key: the partitioner's order),
    where a port goes above the one before it only when its rate is more than ``factor`` times that one's plus
    :data:`IDLE`, until no such pair is left (each swap puts a port above a less busy one, so it ends). The
    priorities are the places: the first of ``n`` ports ``n``, the last 1."""
    order = sorted(rates, key=lambda port: (-before.get(port, 0.0), port))
    swapped = True
    while swapped:
        swapped = False
        for i in range(len(order) - 1):
            upper, lower = order[i], order[i + 1]
            if rates[lower] > factor * rates[upper] + IDLE:
                order[i], order[i + 1] = lower, upper
                swapped = True
    return {port: float(len(order) - place) for place, port in enumerate(order)}
