"""Models on the hub: training, quantising and evaluating them, captured data, the registry.

- pipeline.py runs the stages (config, training_data, training, quantize, inference,
  evaluation, baseline, manifest; errors.py holds their errors) and re-exports their
  public names.
- datasets.py asks devices for captures; uploads.py checks what they send;
  dataset_versions.py stores the rows as npz artifacts.
- dataset_files.py reads an operator's CSV, Parquet or NPZ file into canonical arrays
  and a schema (dataset_tables.py streams the tables; dataset_checks.py holds the checks
  and DatasetFileError).
- retrain.py trains a model's next version with captured rows added; jobs.py runs such
  work in the background with progress.
- registry.py publishes built models as signed TUF targets and reads back the files and
  chunks devices fetch.
"""
