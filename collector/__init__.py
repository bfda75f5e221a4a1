"""cmbagent-tracking's collector daemon: receives shim frames over ZeroMQ and stores them.

It owns the only database connections. Run it with ``cmbagent-collector serve``.
"""
