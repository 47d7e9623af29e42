"""The nftables rules each fault renders to (no root needed): a wrong rule would make
every chaos scenario test something else than it claims."""

from __future__ import annotations

import pytest

from tests.chaos.netns import Faults


def test_no_fault_is_two_empty_accepting_chains_replacing_the_old_table() -> None:
    rules = Faults().ruleset()
    assert rules.startswith("add table inet chaos\ndelete table inet chaos\n")
    assert "drop" not in rules
    assert rules.count("policy accept") == 2


@pytest.mark.parametrize(
    ("faults", "input_rules", "output_rules"),
    [
        (Faults(loss_pct=10), ['iifname "eth0" numgen random mod 100 < 10 counter drop'], []),
        (
            Faults(drop_from={"10.213.0.15", "10.213.0.14"}, drop_to={"10.213.0.15"}),
            ["ip saddr { 10.213.0.14, 10.213.0.15 } drop"],
            ["ip daddr { 10.213.0.15 } drop"],
        ),
        (Faults(drop_to={"10.213.0.12"}), [], ["ip daddr { 10.213.0.12 } drop"]),
        (
            Faults(udp_from={"10.213.0.16"}, udp_to={"10.213.0.16", "10.213.0.11"}),
            ["ip saddr { 10.213.0.16 } meta l4proto udp drop"],
            ["ip daddr { 10.213.0.11, 10.213.0.16 } meta l4proto udp drop"],
        ),
    ],
)
def test_faults_render_to_these_rules(
    faults: Faults, input_rules: list[str], output_rules: list[str]
) -> None:
    rules = faults.ruleset()
    inp, out = rules.split("chain output")
    assert [line.strip().rstrip(";") for line in inp.splitlines() if "drop" in line] == input_rules
    assert [line.strip().rstrip(";") for line in out.splitlines() if "drop" in line] == output_rules
