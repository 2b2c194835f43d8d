"""What devices measure: telemetry windows (windows.py: storing; queries.py: series and
performance; labels.py: label figures per model version; estimates.py: accuracy
estimated from confidence counts; retention.py: downsampling and expiry; figures.py: the
fleet's running totals per model version, for ``GET /metrics``) and fleet drift
(drift.py: the monitor and ingest applier; drift_policy.py: policies and open alerts;
drift_scopes.py: group and fleet)."""
