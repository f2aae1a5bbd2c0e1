"""The real testbed, through python-chi: signing in (`login`, `openstack_rc`), the lease
(`reservation`), the server (`server`), what runs on the node (`node_setup`, `node_stack`), the
whole series headless (`plan` for --dry-run, `run`), and `release`."""
