"""Training and evaluation runs: presets, training data from manifests, the OpenCLIP trainer entry and its log,
zero-shot evaluation, the results table and prune -> train -> evaluate pipelines."""
