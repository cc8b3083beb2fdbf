"""The command line's group and its shared options: each option built once here, used by every command that takes
it. Exit codes: 0 ok, 1 bad data (one line on stderr naming the file or argument), 2 usage error (one line too);
library errors name parameters (`n_prompts`), printed as the flags that set them (--n-prompts).
"""
from __future__ import annotations

import json
import re
import sys
from functools import partial

import click

import minitf
from minitf.explain.llm import DEFAULT_CONCURRENCY, DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT
from minitf.errors import MinitfError
from minitf.names import parse_layers
from minitf.protocol import parse_exclude
from minitf.scores import CLI_HELP as SCORES_HELP, DEFAULT as DEFAULT_SCORES, SCORES
from minitf.index.build import use_index_dir  # --index-dir's callback: sets $MINITF_INDEX_DIR


# ---- errors ------------------------------------------------------------------------------------------
_PARAM = re.compile(r"`(\w+)`")  # how a MinitfError names a parameter: `n_prompts`
_FLAG_OF = {"k": "--top-k", "neurons_file": "--neurons", "shard_chars": "--shard-kib"}  # where not --n-prompts


def flag_of(param: str) -> str:
    """The flag that sets a library parameter: ``n_prompts`` → ``--n-prompts``, ``k`` → ``--top-k``."""
    return _FLAG_OF.get(param, "--" + param.replace("_", "-"))


class _Group(click.Group):
    """Every error is one line on stderr, never a traceback: bad data or a failed step (MinitfError) exits 1,
    a malformed command line (click's UsageError: a missing option, ``--neuron L1X``) exits 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MinitfError as e:
            click.echo(f"error: {self.in_flags(e)}", err=True)
            sys.exit(1)
        except click.UsageError as e:
            click.echo("error: " + " ".join(e.format_message().split()), err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    def in_flags(self, e: MinitfError) -> str:
        """The error's message with each parameter it names that a flag sets written as that flag."""
        flags = {flag for command in self.commands.values() for p in command.params for flag in p.opts}
        return _PARAM.sub(lambda m: flag_of(m[1]) if flag_of(m[1]) in flags else m[0], str(e))


@click.group(cls=_Group)
def main():
    """minitf: a small, exact, pure-NumPy GPT-2 that shows which attention heads switch on an MLP neuron."""


# ---- options: each built once here, used by every command that takes it --------------------------------
def stacked(*options):
    """One decorator applying ``options`` in the order listed (as if stacked in that order)."""
    def apply(f):
        for option in reversed(options):
            f = option(f)
        return f
    return apply


def parsed_by(parse):
    """A click callback parsing each value with ``parse``: a malformed one is a usage error (exit 2) in one line
    naming the flag, e.g. "--layer 2-1: reversed range (write 1-2)"."""
    def callback(ctx, param, value):
        try:
            return parse(value)
        except ValueError as e:
            raise click.UsageError(f"{param.opts[0]} {e}", ctx) from None
    return callback


model_option = click.option("--model", "model_spec", default=minitf.DEFAULT_MODEL, show_default=True,
                            help="Model folder, a name under weights/ (tiny, gpt2, …) or a Hugging Face cache entry.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
no_progress_option = click.option("--no-progress", is_flag=True, help="No progress bar on stderr.")
neuron_option = click.option("--neuron", required=True, callback=parsed_by(minitf.parse_neuron),
                             help="L10N2345, 10:2345 or blocks.10.mlp.hook_pre[2345].")
head_option = click.option("--head", "head_spec", default=None,
                           callback=parsed_by(lambda v: None if v is None else str(minitf.parse_head(v))),
                           help="Only this head (e.g. L1H10).")
scores_option = click.option("--scores", "head_scores", type=click.Choice(SCORES), default=DEFAULT_SCORES,
                             show_default=True, help=SCORES_HELP)
protocol_option = click.option(  # each choice it implies is in minitf.protocol; a flag given overrides one
    "--protocol", type=click.Choice(["neo2024", "neo2023", "minitf"]), default="neo2024", show_default=True,
    help="The paper's protocol: neo2024 (published), neo2023 (Oct 2023) or minitf's own (docs/protocols.md).")
test_corpus_option = click.option("--test-corpus", type=click.Path(dir_okay=False, exists=True), default=None,
                                  help="Mine the test prompts from this corpus, as the paper does [default: the "
                                       "corpus's test split].")
rule_option = click.option("--rule", type=click.Choice(["sigma2", "top3"]), default="sigma2", show_default=True,
                           help="Active heads: effect > mean + 2·std of the candidates (the paper's default), "
                                "or the top 3.")
include_same_layer_option = click.option("--include-same-layer", is_flag=True,
                                         help="Candidates include the neuron's own layer.")
exclude_option = click.option(  # L9N2322,L10N7 → names, each well formed (in range: the library checks)
    "--exclude", multiple=True, help="Neurons to leave out (L9N2322,L10N7; repeatable).",
    callback=parsed_by(lambda v: [str(minitf.parse_neuron(n)) for n in ",".join(v).replace(" ", ",").split(",") if n]))
# -- the protocol's options (trace, report, neurons): a flag left out means "the protocol's choice"
protocol_rule_option = click.option("--rule", type=click.Choice(["sigma2", "top3"]), default=None, help="Active "
                                    "heads: effect > mean + 2·std, or the top 3 [default: the protocol's].")
neurons_protocol_options = stacked(
    protocol_option,
    click.option("--exclude", "exclude", default=None, metavar="paper|none", callback=parsed_by(parse_exclude),
                 help="The authors' reject list of this checkpoint, or none [default: the protocol's]."),
    click.option("--random-neurons", type=click.IntRange(0, 100000), default=0, help="Instead: N neurons per "
                 "layer drawn uniformly (the paper's random baseline)."),
    click.option("--seed", type=int, default=0, show_default=True, help="Seed of --random-neurons."))
# the options whose default or help differs by command: called with those, e.g. split_option(default="all")
layers_option = partial(click.option, "--layer", "--layers", "layers", multiple=True, callback=parsed_by(parse_layers))
corpus_option = partial(click.option, "--corpus", type=click.Path(dir_okay=False), default=None,
                        help="Corpus to mine prompts from [default: the model's corpus.txt.gz].")
split_option = partial(click.option, "--split", type=click.Choice(["train", "test", "all"]), default="train",
                       show_default=True)
n_prompts_option = partial(click.option, "--n-prompts", show_default=True)  # and type=click.IntRange(min, 1000)
bos_option = partial(click.option, "--bos/--no-bos", show_default=True)
ablate_option = partial(click.option, "--ablate", show_default=True, type=click.IntRange(0, 1000))
index_dir_option = click.option("--index-dir", type=click.Path(file_okay=False), envvar="MINITF_INDEX_DIR", expose_value=False,
    callback=use_index_dir, help="Where indexes are read and built [default: <corpus>.index/, then minitf's cache].")
cache_dir_option = partial(click.option, "--cache-dir", type=click.Path(file_okay=False), default=None)
CACHE_DEFAULT = "[default: $MINITF_CACHE_DIR or ~/.cache/minitf]"


def llm_options(llm_default: str | None, llm_help: str, max_calls_help: str):
    """The LLM client's options (explain, score, study); the defaults are ``minitf.explain.llm``'s."""
    return stacked(
        click.option("--llm", "llm_model", default=llm_default, show_default=llm_default is not None, help=llm_help),
        click.option("--base-url", default=None,
                     help="OpenAI-compatible server [default: $OPENAI_BASE_URL or OpenAI]."),
        click.option("--max-calls", type=click.IntRange(0), default=None, help=max_calls_help),
        click.option("--concurrency", type=click.IntRange(1, 64), default=DEFAULT_CONCURRENCY, show_default=True),
        click.option("--timeout", type=click.FloatRange(0, min_open=True), default=DEFAULT_TIMEOUT, show_default=True,
                     help="Seconds to wait for each LLM request."),
        click.option("--max-retries", type=click.IntRange(0, 100), default=DEFAULT_MAX_RETRIES, show_default=True,
                     help="Retries after a connection error, timeout, 429 or 5xx (the openai client's backoff)."),
    )


def emit_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False))



# ---- issue 24: scorers beside the paper's, and its baselines (score, study) ----------------------------------
def _scorers(value: str) -> tuple[str, ...]:
    from minitf.explain.scorers import parse_scorers

    return parse_scorers(value)


scorers_option = click.option(
    "--scorers", default="paper", show_default=True, callback=parsed_by(_scorers),
    help="Scorers of each explanation, comma-separated: paper (the protocol's Yes/No balanced accuracy, with its "
         "95 % interval and permutation p-value), detection, fuzz, simulation.")
baselines_option = click.option(
    "--baselines", is_flag=True,
    help="Also score each pair's baselines with the LLM: a random explanation (another pair's, drawn with --seed) "
         "and the token-only explanation (more calls: --dry-run counts them). Constant answers always come.")
seed_option = click.option("--seed", default=0, show_default=True, type=int,
                           help="Seed of the random-explanation baseline and of permutation draws.")
