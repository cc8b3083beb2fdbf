"""Getting a model into memory: ``weights`` (config.json + model.safetensors → float32 arrays, F32/F16/BF16,
both key styles; ``model_sha256``, the loaded weights' identity), ``tokenizer`` (tiktoken from vocab.json +
merges.txt) and ``hub`` (downloads from the Hugging Face hub, checked and resumable; finding a folder for
``--model``)."""
