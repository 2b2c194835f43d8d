"""Migration 0001's tables, by the module that defines them (frozen; see each module)."""
