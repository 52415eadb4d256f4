"""The signed HTTP session the `horde` client and the node share (transport/session.py)."""
