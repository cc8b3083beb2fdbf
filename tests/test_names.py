"""minitf.names: parsing names and layer lists, and the one range check."""
import pytest
from click.testing import CliRunner

from cli import main
from minitf.errors import MinitfError
from minitf.names import Head, Neuron, check_head, check_layer, check_neuron, parse_head, parse_layers, parse_neuron


def test_parse_layers():
    assert parse_layers("3") == [3]
    assert parse_layers(["3,5", "2-4", "5"]) == [2, 3, 4, 5]
    assert parse_layers("1 2") == [1, 2]
    assert parse_layers("4-4") == [4]
    assert parse_layers([]) == []
    with pytest.raises(ValueError, match=r"^2-1: reversed range \(write 1-2\)$"):
        parse_layers("2-1")
    for bad in ("x", "-1", "2-", "1-2-3", "1.5"):
        with pytest.raises(ValueError, match="write layers like 3, 3,5 or 2-4"):
            parse_layers(bad)
    with pytest.raises(MinitfError, match=r"^--layer: layer 6 is out of range: the model has 6 layers \(0–5\)$"):
        parse_layers("4-6", 6, where="--layer")


def test_range_checks():
    assert check_layer(5, 6) == 5
    assert check_neuron(Neuron(1, 63), 2, 64) == Neuron(1, 63)
    assert check_head(Head(1, 3), 2, 4) == Head(1, 3)
    with pytest.raises(MinitfError, match=r"^layer -1 is out of range: the model has 6 layers \(0–5\)$"):
        check_layer(-1, 6)
    with pytest.raises(MinitfError, match=r"^--neuron L1N64: neuron 64 is out of range: layer 1 has 64 neurons \(0–63\)$"):
        check_neuron(Neuron(1, 64), 2, 64, where="--neuron L1N64")
    with pytest.raises(MinitfError, match=r"^head 4 is out of range: the model has 4 heads per layer \(0–3\)$"):
        check_head(Head(0, 4), 2, 4)
    with pytest.raises(MinitfError, match="layer 2 is out of range"):
        parse_neuron("L2N0", 2, 64)
    with pytest.raises(MinitfError, match="head 9 is out of range"):
        parse_head("L1H9", 2, 4)
    assert parse_neuron("L9N9") == Neuron(9, 9)  # no sizes: no check


def test_cli_layer_lists_are_checked():
    res = CliRunner().invoke(main, ["neurons", "--model", "tiny", "--layer", "2-1"])
    assert res.exit_code == 2 and res.output.strip() == "error: --layer 2-1: reversed range (write 1-2)"  # usage
    res = CliRunner().invoke(main, ["neurons", "--model", "tiny", "--layer", "0,99"])
    assert res.exit_code == 1 and "--layer: layer 99 is out of range" in res.output
