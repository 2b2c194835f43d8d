"""Ingest: devices' reports into SQL, in batches, acknowledged once committed (ADR 0010).

report.py defines a Report and the ReportApplier interface; writer.py is the batch writer
that runs every applier in one transaction. The appliers live with the rows they own
(hub/fleet/progress.py, hub/telemetry/windows.py, hub/telemetry/drift.py).
"""
