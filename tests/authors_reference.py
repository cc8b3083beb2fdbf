"""The paper authors' procedure, transcribed onto TransformerLens 3.9 (tests only: it needs torch).

Follows github fbarez/Interpreting-Context-Look-ups (commit 7c4627c = neo2024; b98f23e = neo2023):
``src/neuron_texts.py`` (find_neurons, get_neuron_max_acts, find_truncated_texts), ``src/datahandlers.py``
(ActivatingDataset.remove_prompts_longer_than / load_truncated_prompts, ExplanationPromptGen),
``src/neuron_heads.py::_get_head_attribution`` and notebooks/4_head_attribution.ipynb (the mean + 2σ rule and
the first 20 prompts), ``src/neuron_explain.py::generate_explanation_prompt_dict`` (the bands).

Three departures, none changing a value: forward passes are batched with right padding (causal attention: a
real position never sees a padded one; maxima and reads are taken at real positions only) and stop after the
last layer read; the bisection runs all documents of a neuron in lockstep (each document's start/end/mid
sequence is the authors'); head results are stacked for the layers before the neuron's only.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch
from transformers import GPT2LMHeadModel, GPT2TokenizerFast

from reference import transformer_lens_model

BATCH = 16


def load_model(folder: Path):
    """HookedTransformer as from_pretrained(center_unembed, center_writing_weights, fold_ln) builds it, with the
    folder's tokenizer."""
    hf = GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32)
    tl = transformer_lens_model(hf)
    tl.set_tokenizer(GPT2TokenizerFast.from_pretrained(folder))
    return tl


def find_neurons(model, layers, num_neurons_per_layer, rejected_neurons=()):
    """src/neuron_texts.py::find_neurons (the loop bound is d_mlp here: theirs, d_vocab, can only crash)."""
    results, rejected = {}, []
    for layer_num in layers:
        dot_product = model.W_out[layer_num] @ model.W_U  # [neuron, token]
        values, indices = torch.max(dot_product, dim=-1)
        top_values, top_indices = torch.topk(values, indices.shape[0])
        found = 0
        for i in range(top_indices.shape[0]):
            str_token = model.to_string(indices[top_indices][i])
            if len(str_token) <= 2 or str_token[0] != " ":
                continue
            neuron_index = top_indices[i].item()
            if (layer_num, neuron_index) in rejected_neurons:
                rejected.append((layer_num, neuron_index, str_token))
                continue
            results[(layer_num, neuron_index)] = {"token": str_token, "congruence": top_values[i].item()}
            found += 1
            if found >= num_neurons_per_layer:
                break
    return results, rejected


def _padded(seqs, pad):
    lengths = torch.tensor([s.shape[-1] for s in seqs])
    out = torch.full((len(seqs), int(lengths.max())), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : s.shape[-1]] = s.reshape(-1)
    return out, lengths


def _posts(model, tokens, neurons):
    """{(layer, n): hook_post[:, :, n]} of one run (stopped after the deepest layer asked: nothing read later)."""
    cache = {}

    def hook_for(layer, n):
        def hook(act, hook):
            cache[(layer, n)] = act[:, :, n].detach()
        return hook

    with torch.inference_mode():
        model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{l}.mlp.hook_post", hook_for(l, n)) for l, n in neurons],
                             stop_at_layer=max(l for l, _ in neurons) + 1)
    return cache


def get_neuron_max_acts(model, texts, neurons):
    """src/neuron_texts.py::get_neuron_max_acts: per document, (max, argmax) of hook_post over all positions of
    to_tokens(text) (BOS prepended, BOS position included)."""
    out = {n: [] for n in neurons}
    toks = [model.to_tokens(t) for t in texts]
    for b in range(0, len(toks), BATCH):
        tokens, lengths = _padded(toks[b:b + BATCH], model.tokenizer.bos_token_id)
        cache = _posts(model, tokens, neurons)
        real = torch.arange(tokens.shape[1])[None, :] < lengths[:, None]
        for n in neurons:
            v, i = torch.max(torch.where(real, cache[n], -torch.inf), dim=1)
            out[n] += [[float(a), int(p)] for a, p in zip(v.tolist(), i.tolist())]
    return out


def find_truncated_texts(model, neuron_max_acts, texts, num_samples=30, act_ratio=0.8):
    """src/neuron_texts.py::find_truncated_texts (the peak-at-BOS crash becomes a dropped document)."""
    result = {}
    for neuron, acts in neuron_max_acts.items():
        rows = [x + [i] for i, x in enumerate(acts)]
        data = sorted(rows, key=lambda x: x[0], reverse=True)[:num_samples]
        data = [{"og_act": v[0], "token_pos": v[1], "dataset_index": v[2]} for v in data]
        state = []  # [example, tokens, start, end, mid]
        for ex in data:
            tokens = model.to_tokens(texts[ex["dataset_index"]], prepend_bos=False)[:, :ex["token_pos"]]
            if tokens.shape[1] == 0:
                ex["bos_peak"] = True
                continue
            start, end = 0, tokens.shape[1] - 1
            mid = (start + end) // 2
            if start == mid:
                ex["start_pos"], ex["trunc_act"] = mid, ex["og_act"]
                continue
            state.append([ex, tokens, start, end, mid])
        while state:
            batch, lengths = _padded([s[1][:, s[4]:] for s in state], 0)
            post = _posts(model, batch, [neuron])[neuron]
            still = []
            for row, s in enumerate(state):
                act = post[row, lengths[row] - 1].item()
                if act > act_ratio * s[0]["og_act"]:
                    s[2] = s[4]
                else:
                    s[3] = s[4]
                s[4] = (s[2] + s[3]) // 2
                if s[2] == s[4]:
                    s[0]["start_pos"], s[0]["trunc_act"] = s[4], act
                else:
                    still.append(s)
            state = still
        result[neuron] = [ex for ex in data if not ex.get("bos_peak")]
    return result


def load_truncated_prompts(model, examples, texts, length=100):
    """ActivatingDataset.remove_prompts_longer_than(100) then load_truncated_prompts(replace newlines)."""
    examples = [e for e in examples if e["token_pos"] - e["start_pos"] < length]
    prompts = []
    for e in examples:
        toks = model.to_tokens(texts[e["dataset_index"]], prepend_bos=False)
        prompts.append(model.to_string(toks[:, e["start_pos"]:e["token_pos"]])[0].replace("\n", " "))
    return prompts


def head_attribution(model, prompts, neuron, rule, n_prompts=None):
    """notebooks/4_head_attribution.ipynb (neo2024: prompts[:20], mean + 2σ) / src/neuron_heads.py (neo2023:
    all prompts, top 3): {prompt: active head list}, a dict keyed by the prompt string."""
    layer, no = neuron
    if n_prompts is not None:
        prompts = prompts[:n_prompts]
    bos = model.tokenizer.bos_token_id
    results = {}
    for b in range(0, len(prompts), BATCH):
        batch = prompts[b:b + BATCH]
        tokens, _ = _padded([model.to_tokens(p) for p in batch], bos)
        prompt_lengths = torch.logical_and(tokens != bos, tokens != bos).sum(-1)
        with torch.inference_mode():
            # theirs: run_with_cache(tokens), stack_head_results() of every layer, then [:, :layer·H]; the same
            # numbers from the cached hook_z (all stack_head_results reads), stacked for the layers before the neuron's
            _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("attn.hook_z"))
            head_output = cache.stack_head_results(layer=layer)  # [layer·H, batch, pos, d_model]
            last = head_output[:, torch.arange(len(batch)), prompt_lengths]  # [layer·H, batch, d_model]
            attr = torch.einsum("hbw,w->bh", last, model.W_in[layer, :, no])
        for p, a in zip(batch, attr):
            if rule == "sigma2":
                active = torch.nonzero(a > a.mean() + 2 * a.std()).reshape(-1).tolist()
            else:
                active = torch.topk(a, k=3).indices.tolist()
            results[p] = active
    return results


def differential_heads(head_results, band):
    """generate_explanation_prompt_dict: Counter over the flattened active lists, n = the unique prompts."""
    n = len(head_results)
    counts = Counter(h for heads in head_results.values() for h in heads)
    if band == "25-75":
        return [h for h, c in counts.items() if 0.25 * n <= c <= 0.75 * n]
    return [h for h, c in counts.items() if c > 0.25 * n]


def explanation_prompt(token, positive_examples, negative_examples,
                       explanation_prompt="In two to three sentences, suggest when the attention head is active."):
    """ExplanationPromptGen(token, positive, negative).get_prompt(shots=0), src/datahandlers.py."""
    newline = "\n"
    attn_head = (f'This attention head in particular helps to predict that the next token is "{token}", but it is '
                 f"only active in some documents and not others. ")
    positive_str = f'Examples where the attention head is active: """\n*{f"{newline}*".join(positive_examples)}\n"""\n'
    negative_str = f'Examples where the attention head is inactive: """\n*{f"{newline}*".join(negative_examples)}\n"""\n'
    return ("We are studying attention heads in a transformer architecture neural network. Each attention head looks "
            "for some particular thing in a short document.\n" + attn_head
            + "Look at the documents and explain what makes the attention head active, taking into consideration "
              "the inactive examples.\n" + positive_str + negative_str + explanation_prompt)
