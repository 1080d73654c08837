"""The node daemon: wires config, keys, tor, the mesh core and the publisher into one process."""
