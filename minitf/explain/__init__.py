"""Step 4: an LLM explains when a differential head is active, and the explanation is scored.

``driver`` (explain and score a head or a neuron; the ``explain`` and ``score`` commands), ``llm`` (the
chat-completions client: cache, budget, retries, concurrency), ``prompts`` (the messages sent), ``answers``
(parsing the Yes/No answers and their probabilities), ``metrics`` (balanced accuracy, ROC-AUC, summaries)
and ``store`` (the results on disk)."""
