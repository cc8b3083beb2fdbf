"""minitf's command line: it only parses arguments and prints; the work is in the ``minitf`` package.

Exit codes: 0 ok, 1 bad data (one line on stderr naming the file or argument), 2 usage error.
"""
from __future__ import annotations

import json
import sys

import click

import minitf
from minitf.errors import MinitfError


class _Group(click.Group):
    """Turns MinitfError into one line on stderr and exit 1, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MinitfError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group)
def main():
    """minitf: a small, exact, pure-NumPy GPT-2 that shows which attention heads switch on an MLP neuron."""


model_option = click.option("--model", "model_spec", default=minitf.DEFAULT_MODEL, show_default=True,
                            help="Model folder, a name under weights/ (tiny, gpt2, …) or a Hugging Face cache entry.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def _emit_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False))


@main.command()
@model_option
@json_option
def info(model_spec, as_json):
    """Shapes, dtype and parameter count of a model."""
    from minitf.info import model_info

    data = model_info(minitf.load(model_spec))
    if as_json:
        return _emit_json(data)
    for key, value in data.items():
        if key != "tensors":
            click.echo(f"{key:<14} {value}")
    click.echo("tensors:")
    for name, shape in data["tensors"].items():
        click.echo(f"  {name:<28} {shape}")


@main.command()
@model_option
@click.option("--text", required=True, help="The prompt.")
@click.option("--top", "top_k", default=10, show_default=True, type=click.IntRange(1, 1000))
@click.option("--bos/--no-bos", default=False, show_default=True, help="Prepend <|endoftext|> to the prompt.")
@json_option
def run(model_spec, text, top_k, bos, as_json):
    """Top-k next-token predictions for a prompt."""
    from minitf.info import next_token_predictions

    data = next_token_predictions(minitf.load(model_spec), text, top_k, bos)
    if as_json:
        return _emit_json(data)
    click.echo(f"prompt: {data['n_tokens']} tokens; next token:")
    for row in data["predictions"]:
        click.echo(f"  {row['prob']:7.2%}  {row['id']:>6}  {row['token']!r}")


if __name__ == "__main__":
    main()
