"""Test support shared by tests/ and bench/: real git repositories built from scratch (World) and
the reachability probe of the real upstreams. Importable from the repository root (pytest's
`pythonpath = ["."]`; bench/ adds the root itself)."""
