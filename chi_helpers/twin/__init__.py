"""A twin of the Chameleon services the series talks to, on this machine's loopback addresses.

Keystone, the sites list, Blazar, Nova, Neutron and Glance answer HTTP on one address in
127.0.0.0/8 (path prefixes, as a DevStack lays them out: `/identity/v3`, `/reservation/v1`,
`/compute/v2.1`, `/network/v2.0`, `/image/v2`; Keystone also on port 5000, where python-chi looks
for it), with one shared state (`world`), and each server's floating IP is another loopback address
with an SSH server (`node`) that answers as the series' node would. The services are written from
the real ones' documented behaviour and python-chi's code: where the two differ from our helpers,
the twin is right. `python -m chi_helpers twin up|status|down` runs it; the tests start their own.
"""
