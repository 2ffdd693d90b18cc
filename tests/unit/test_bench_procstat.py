"""The bench's reading of /proc/stat: steal is capacity taken by the hypervisor, not work done here."""

from __future__ import annotations

from bench.procstat import TICK, machine_cpu_s, parse_cpu_line
from pytest import approx


def test_steal_is_apart_from_busy_and_part_of_the_total() -> None:
    #          user nice system idle iowait irq softirq steal guest guest_nice
    cpu = parse_cpu_line("cpu  100 10 40 500 20 5 15 60 7 0")
    assert cpu.busy * TICK == approx(100 + 10 + 40 + 5 + 15)
    assert cpu.softirq * TICK == approx(15)
    assert cpu.steal * TICK == approx(60)
    assert cpu.total * TICK == approx(100 + 10 + 40 + 500 + 20 + 5 + 15 + 60)


def test_a_kernel_without_a_steal_column_reads_as_none_stolen() -> None:
    cpu = parse_cpu_line("cpu  100 10 40 500 20 5 15")
    assert cpu.steal == 0 and cpu.total * TICK == approx(690)


def test_this_machine_reads() -> None:
    cpu = machine_cpu_s()
    assert cpu.total >= cpu.busy + cpu.steal > 0
