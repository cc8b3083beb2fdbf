"""minitf: a small, exact, pure-NumPy GPT-2 for finding the attention heads that switch on an MLP neuron.

    import minitf
    model = minitf.load("tiny")                       # a folder, a name under weights/, or an HF cache entry
    run = model.run(model.encode("And God said"), keep={"pattern", "z", "post"})
    run.head("L3H5")["pattern"]                       # [B, T, T]
    run.neuron("L4N100")["post"]                      # [B, T]
"""
from pathlib import Path

from minitf.errors import MinitfError
from minitf.model import INTERNALS, Intervention, Model, Run
from minitf.names import Head, Neuron, parse_head, parse_neuron

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
DEFAULT_MODEL = "tiny"


def load(model: str | Path = DEFAULT_MODEL) -> Model:
    """Load a model folder (path), a name under ``weights/`` (e.g. ``tiny``, ``gpt2``) or a Hugging Face cache entry."""
    from minitf.load.hub import resolve_model_dir

    folder = resolve_model_dir(str(model), WEIGHTS_DIR)
    if folder.is_absolute() and folder.is_relative_to(Path.cwd()):
        folder = folder.relative_to(Path.cwd())  # shown in outputs: keep it short
    return Model.load(folder)


__all__ = ["load", "Model", "Run", "Intervention", "INTERNALS", "Head", "Neuron", "parse_head", "parse_neuron",
           "MinitfError", "WEIGHTS_DIR", "DEFAULT_MODEL"]
