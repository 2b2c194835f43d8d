"""The hub's storage: the SQL schema (tables.py), connecting to it (engine.py), and the
content-addressed files of models and datasets (artifacts.py)."""
