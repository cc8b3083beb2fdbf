"""All five steps over many neurons in one resumable run: ``run`` (choosing the neurons, the per-neuron work,
resuming, the records), ``summary`` (the aggregates and the printed table) and ``site`` (the offline site)."""
