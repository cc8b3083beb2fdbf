"""The command line as a user meets it: output, JSON schemas, exit codes and one-line errors."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL = str(ROOT / "tests" / "golden" / "prefixed_f16")
SCHEMA = json.loads((ROOT / "docs" / "trace.schema.json").read_text())


def cli(*args, ok=True):
    out = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True, cwd=ROOT)
    if ok:
        assert out.returncode == 0, out.stderr
    return out


def assert_one_line_error(out, code, *fragments):
    assert out.returncode == code, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1, out.stderr  # usage errors (2) too
    for f in fragments:
        assert f in out.stderr, out.stderr


def test_info_and_run_json():
    info = json.loads(cli("info", "--model", MODEL, "--json").stdout)
    assert info["layers"] == 3 and info["parameters"] == 17440 and info["stored dtype"] == "F16"
    run = json.loads(cli("run", "--model", MODEL, "--text", "the theatre", "--top", "3", "--json").stdout)
    probs = [p["prob"] for p in run["predictions"]]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1


def test_trace_json_validates_against_the_documented_schema():
    jsonschema = pytest.importorskip("jsonschema")
    out = cli("trace", "--neuron", "L2N7", "--model", MODEL, "--text", "the theatre is here", "--text",
              "and the king said", "--json")
    result = json.loads(out.stdout)
    jsonschema.validate(result, SCHEMA)
    assert result["identity_check"]["max_rel_error"] < 1e-5
    assert [p["text"] for p in result["prompts"]] == ["the theatre is here", "and the king said"]


def test_trace_text_view():
    out = cli("trace", "--neuron", "2:7", "--model", MODEL, "--text", "the theatre is here").stdout
    assert "neuron L2N7" in out and "identity check: max |Σ terms + constant − pre|" in out
    assert "scores paper" in out and "heads by mean context part" in out  # the default: the paper's scores
    exact = cli("trace", "--neuron", "2:7", "--model", MODEL, "--text", "the theatre is here", "--scores", "exact").stdout
    assert "scores exact" in exact and "heads by mean direct effect" in exact
    assert_one_line_error(cli("trace", "--neuron", "2:7", "--model", MODEL, "--text", "a", "--scores", "tl", ok=False),
                          2, "--scores")


@pytest.mark.parametrize("spec", ["L2N7", "2:7", "blocks.2.mlp.hook_pre[7]"])
def test_neuron_spec_forms(spec):
    assert json.loads(cli("trace", "--neuron", spec, "--model", MODEL, "--text", "a", "--json").stdout)["neuron"]["name"] == "L2N7"


def test_usage_and_data_errors():
    assert_one_line_error(cli("trace", "--neuron", "L2X7", "--model", MODEL, "--text", "a", ok=False), 2, "is not a neuron")
    assert_one_line_error(cli("trace", "--neuron", "L6N1", "--model", MODEL, "--text", "a", ok=False), 1,
                          "the model has 3 layers (0–2)")
    assert_one_line_error(cli("trace", "--neuron", "L1N64", "--model", MODEL, "--text", "a", ok=False), 1,
                          "layer 1 has 64 neurons (0–63)")
    assert_one_line_error(cli("trace", "--neuron", "L1N1", "--model", MODEL, "--text", "", ok=False), 1, "prompt 1 is empty")
    assert_one_line_error(cli("run", "--model", "/nonexistent/model", "--text", "a", ok=False), 1, "/nonexistent/model")


def test_prompt_files(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine line\n\xff\xfe broken\n")
    assert_one_line_error(cli("trace", "--neuron", "L1N1", "--model", MODEL, "--prompts", str(bad), ok=False), 1,
                          "bad.txt: not UTF-8 text")
    good = tmp_path / "p.jsonl"
    good.write_text('{"text": "the king"}\n{"text": "a theatre"}\n')
    result = json.loads(cli("trace", "--neuron", "L1N1", "--model", MODEL, "--prompts", str(good), "--json").stdout)
    assert [p["text"] for p in result["prompts"]] == ["the king", "a theatre"]


def test_long_prompt_is_cut_and_said():
    out = cli("trace", "--neuron", "L1N1", "--model", MODEL, "--text", "word " * 50, "--json")
    result = json.loads(out.stdout)
    assert result["prompts"][0]["truncated"] and len(result["prompts"][0]["tokens"]) == 16
    assert "note: prompt 1 is longer than the context: kept its last 16 tokens" in out.stderr


def test_warnings_are_one_line_of_our_own(capsys):
    """Every warning goes through minitf.errors.warn: one ``warning: …`` line, never Python's warnings format."""
    from minitf.errors import warn

    warn("first part\nsecond   part")
    assert capsys.readouterr() == ("", "warning: first part second part\n")
    for path in [ROOT / "cli.py", *(ROOT / "minitf").glob("*.py")]:
        source = path.read_text()
        for call in ("warnings.warn(", "log.warning(", "logging.warning(", "UserWarning"):
            assert call not in source or path.name == "errors.py", (path.name, call)


def test_long_text_is_cut_the_same_way_by_run_and_trace():
    """One rule for an over-long --text: keep its last n_ctx tokens (BOS included) and say so, in run and trace."""
    text = " ".join(f"w{i}" for i in range(40))
    run = cli("run", "--model", MODEL, "--text", text, "--bos", "--json")
    trace = cli("trace", "--neuron", "L1N1", "--model", MODEL, "--text", text, "--json")
    assert run.stderr == "note: --text is longer than the context: kept its last 16 tokens\n"
    assert trace.stderr == "note: prompt 1 is longer than the context: kept its last 16 tokens\n"
    kept = json.loads(run.stdout)
    assert kept["truncated"] and kept["n_tokens"] == 16
    assert kept["tokens"] == json.loads(trace.stdout)["prompts"][0]["tokens"]
    assert "".join(kept["tokens"][1:]) == text[-len("".join(kept["tokens"][1:])):]  # the end of the text
    short = json.loads(cli("run", "--model", MODEL, "--text", "w1 w2", "--json").stdout)
    assert not short["truncated"]


@pytest.mark.parametrize("line, problem", [
    ('{"text": 123}', 'line 2: expected an object with a string field "text"'),
    ('{"txt": "a"}', 'line 2: expected an object with a string field "text"'),
    ('["a"]', 'line 2: expected an object with a string field "text"'),
    ('{"text": "a"', "line 2: not valid JSON"),
])
def test_jsonl_prompt_lines_must_hold_text(tmp_path, line, problem):
    path = tmp_path / "p.jsonl"
    path.write_text('{"text": "the king"}\n' + line + "\n")
    out = cli("trace", "--neuron", "L1N1", "--model", MODEL, "--prompts", str(path), ok=False)
    assert_one_line_error(out, 1, f"{path}: {problem}")
    assert out.stdout == ""


def test_download_takes_only_the_gpt2_sizes(tmp_path):
    out = cli("download", "gpt5", "--dest", str(tmp_path / "w"), "--endpoint", "http://127.0.0.1:9", ok=False)
    assert out.stderr == ("error: gpt5: not a GPT-2 model; download takes gpt2, gpt2-medium, gpt2-large or gpt2-xl "
                          "(optionally as openai-community/<name>)\n")
    assert out.returncode == 1 and not (tmp_path / "w").exists()


def test_counts_are_singular_for_one():
    from minitf.util.fmt import count

    assert (count(0, "prompt"), count(1, "prompt"), count(2, "cache hit")) == ("0 prompts", "1 prompt", "2 cache hits")
    out = cli("trace", "--neuron", "L1N1", "--model", MODEL, "--text", "the king").stdout
    assert out.splitlines()[5].startswith("1 prompt (given with --text); rule sigma2; scores paper; 4 candidate heads (layers < 1)")
    run = cli("run", "--model", MODEL, "--text", "", "--bos", "--top", "1").stdout
    assert run.startswith("prompt: 1 token; next token:")


LAUNCHERS = {"cli.py": [sys.executable, str(ROOT / "cli.py")], "python -m minitf": [sys.executable, "-m", "minitf"],
             "minitf": ["minitf"]}


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_the_three_ways_to_start_the_cli(launcher):
    if launcher == "minitf" and shutil.which("minitf") is None:
        pytest.skip("the minitf console script is not on PATH (it is after `pip install -e .`)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}  # this tree

    def start(*args):
        return subprocess.run([*LAUNCHERS[launcher], *args], capture_output=True, text=True, cwd=ROOT, env=env)

    helped = start("--help")
    assert helped.returncode == 0 and helped.stderr == "", helped.stderr
    assert all(command in helped.stdout for command in ("info", "trace", "explain", "index", "study", "report"))
    info = start("info", "--model", MODEL, "--json")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["parameters"] == 17440
    bad = start("trace", "--neuron", "L1X")
    assert bad.returncode == 2 and bad.stderr.startswith("error: --neuron 'L1X' is not a neuron") and \
        bad.stderr.count("\n") == 1


SPECS = {"--neuron": "L1X", "--show": "L1X", "--exclude": "L1N2,L1X", "--layer": "abc", "--head": "L1X"}


def _malformed_spec_cases():
    """(command, args, flag) for each option of each command that takes a neuron, layer or head spec."""
    from minitf.cli import main

    cases = []
    for name, command in sorted(main.commands.items()):
        required = {o.opts[0]: o for o in command.params if getattr(o, "required", False)}
        for option in command.params:
            flag = next((f for f in option.opts if f in SPECS), None)
            if flag is None:
                continue
            args = [name]
            if "--neuron" in required and flag != "--neuron":
                args += ["--neuron", "L1N1"]
            if "--out" in required:
                args += ["--out", "OUT"]
            cases.append((name, [*args, flag, SPECS[flag]], flag))
    return cases


def test_every_spec_option_is_covered():
    covered = {(name, flag) for name, _, flag in _malformed_spec_cases()}
    assert {("trace", "--neuron"), ("report", "--neuron"), ("explain", "--neuron"), ("score", "--neuron"),
            ("explain", "--head"), ("score", "--head"), ("neurons", "--layer"), ("index", "--layer"),
            ("study", "--layer"), ("index", "--show"), ("study", "--exclude")} <= covered


@pytest.mark.parametrize("name, args, flag", _malformed_spec_cases(), ids=lambda x: x if isinstance(x, str) else "")
def test_a_malformed_spec_is_a_usage_error_in_one_line(name, args, flag, tmp_path):
    out = cli(*[str(tmp_path / "out") if a == "OUT" else a for a in args], ok=False)
    assert out.returncode == 2 and out.stdout == "", out
    assert out.stderr.startswith(f"error: {flag} ") and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert not (tmp_path / "out").exists()  # nothing written


def test_a_malformed_layer_list_names_the_problem():
    out = cli("neurons", "--model", MODEL, "--layers", "1", "--layer", "2-1", ok=False)
    assert out.returncode == 2 and out.stderr == "error: --layer 2-1: reversed range (write 1-2)\n"


def test_library_errors_name_parameters_and_the_cli_prints_flags(tmp_path):
    from minitf.cli import flag_of, main
    from minitf.corpus import check_split
    from minitf.errors import MinitfError

    with pytest.raises(MinitfError) as info:
        check_split("dev")
    assert str(info.value) == "`split` dev: choose train, test or all" and info.value.param == "split"
    assert main.in_flags(info.value) == "--split dev: choose train, test or all"
    assert flag_of("n_prompts") == "--n-prompts" and flag_of("k") == "--top-k" and flag_of("neurons_file") == "--neurons"
    kept = MinitfError("`not_a_parameter` and `n_prompts`: x")  # a name no flag sets is left as the library wrote it
    assert main.in_flags(kept) == "`not_a_parameter` and --n-prompts: x"
    # every parameter an error of minitf names is one a flag of some command sets
    flags = {f for command in main.commands.values() for p in command.params for f in p.opts}
    named = {m for path in (ROOT / "minitf").rglob("*.py") if "cli" not in path.relative_to(ROOT / "minitf").parts
             for m in re.findall(r'param="(\w+)"', path.read_text())}
    assert {"n_prompts", "k", "out", "max_calls", "layers"} <= named
    assert {p: flag_of(p) for p in named if flag_of(p) not in flags} == {}
    # through the CLI: the flag, not the parameter
    assert_one_line_error(cli("run", "--model", MODEL, "--text", "", ok=False), 1, "error: --text: empty prompt")
    assert_one_line_error(cli("index", "--model", MODEL, "--corpus", str(tmp_path / "c.txt"), "--shard-kib", "1",
                              "--layers", "7", "--no-progress", ok=False), 1, "error: --layers: layer 7 is out of range")


@pytest.mark.parametrize("name", ["trace", "report"])
def test_trace_and_report_take_no_progress(name, tmp_path, monkeypatch):
    """--no-progress reaches the corpus scan that mines the prompts (the one progress bar they show)."""
    from click.testing import CliRunner

    import minitf.prompts
    from minitf.cli import main

    asked = []
    monkeypatch.setattr(minitf.prompts, "mine_prompts", lambda *a, **kw: asked.append(kw["progress"]) or [])
    (tmp_path / "c.txt").write_text("a corpus\n")
    args = [name, "--neuron", "L1N1", "--model", MODEL, "--corpus", str(tmp_path / "c.txt"), "--protocol", "minitf",
            *(["--out", str(tmp_path / "r.html")] if name == "report" else [])]
    for extra in ([], ["--no-progress"]):
        res = CliRunner().invoke(main, [*args, *extra])
        assert res.exit_code == 1 and "no document activates L1N1" in res.output, res.output  # nothing mined
    assert asked == [True, False] and not (tmp_path / "r.html").exists()
