"""WireGuard management: the node's tunnel interface, its key pair and one peer per member.

  errors.py   WireGuardError, CommandError (every failed `wg`/`ip` command, named)
  keys.py     X25519 key pair (base64 as `wg` prints it), stored 0600
  names.py    interface names unique machine-wide (the UAPI socket path is global)
  spec.py     what the interface should look like (InterfaceSpec, PeerSpec)
  dump.py     parsers for `wg show IF dump` and `ip -j addr show`
  plan.py     sans-IO: observed state + spec -> repair actions, peer health
  manager.py  the shell: runs `ip`, `wg` and wireguard-go and applies the plan
"""
