"""The node agent and the collectors that read a machine's vital signs."""
