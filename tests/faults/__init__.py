"""The fault matrix: each test reproduces one way the safety promise could break, with real
processes, and is marked ``@pytest.mark.fault(item=N)`` (docs/reliability.md lists them)."""
