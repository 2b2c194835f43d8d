"""Models on the hub: data, builds (train, quantise, judge), the registry and lineage.

- data/ holds the operator's dataset versions and the rows captures bring in (its
  ``__init__`` has the map); nothing there builds models.
- pipeline.py runs a build's stages (config, training_data, training or convnet, compact,
  quantize, runner/inference/tflite, metrics, gates, baseline, manifest; errors.py holds
  their errors) and re-exports their public names; tuning.py is the bounded search.
- builds.py runs builds on dataset versions as jobs (jobs.py) and records each as a
  training run (runs.py, with provenance.py); lineage.py reads a version's story back.
- retrain.py trains a model's next version with captured rows added.
- registry.py publishes built models as signed TUF targets and reads back the files and
  chunks devices fetch.
"""
