"""The fleet: nodes, the service registry and heartbeats, discovery, SSH nodes,
containers, wake-on-LAN and the Command Center."""
