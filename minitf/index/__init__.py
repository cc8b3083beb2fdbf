"""The neuron index: every neuron's top-activating documents of a corpus, built once, read by step 2.

``build`` (build, resume and load an index; the local worker processes), ``shard`` (one shard of documents'
forward passes and top-k updates), ``topk`` (the running top-k and histogram state and its order-free
merge), ``cluster`` (the same shards on a Ray cluster) and ``histogram`` (a neuron's activation histogram
from the index, for the report and the study site)."""
