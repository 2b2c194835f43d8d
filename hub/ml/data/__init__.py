"""Data on the hub: the operator's dataset files and the rows captures bring in.

- files.py, tabular.py, checks.py   read a CSV, Parquet or NPZ upload from disk and refuse
                                    what does not fit (ADR 0014)
- store.py                          dataset versions: staged, content-addressed, immutable
- captures.py                       captures: ask devices for rows, verify their uploads
  (capture_uploads.py, captured_rows.py); capture_versions.py keeps labelled captured rows
  as dataset versions, capture_labels.py takes labels posted to the hub later
- samples.py                        datasets shipped for tests, benchmarks and the demo

Nothing here builds models: the pipeline (hub/ml/pipeline.py) reads the arrays a version
holds through hub/ml/builds.py.
"""
