"""minitf.util.fmt: the one way each kind of number is written for people."""
import math

from minitf.util.fmt import count, num, si, thousands


def test_si_thousands_and_missing_numbers():
    assert [si(n) for n in (0, 999, 1000, 3_456, 5_600_000, 7_890_000_000)] == ["0", "999", "1k", "3.46k", "5.6M",
                                                                               "7.89G"]
    assert (thousands(12_345), thousands(1_234_567.9), thousands(12)) == ("12,345", "1,234,567", "12")
    assert [num(x) for x in (None, math.nan, -math.inf, 0.5, 2)] == ["–", "–", "–", "0.500", "2.000"]
    assert num(-0.00123, "+.1e") == "-1.2e-03" and count(1, "head") == "1 head" and count(0, "head") == "0 heads"
