"""The chameleon target as a plan: every cloud call and node command, in order, per notebook.

`python -m chi_helpers run --target chameleon ... --dry-run` prints it and touches nothing. The
plan is built from the same pieces the notebooks run (reservation, node_setup, node_stack), so
what it prints is what a run would do.
"""

from __future__ import annotations

from dataclasses import dataclass

from chi_helpers import parameters
from chi_helpers.chameleon import node_setup
from chi_helpers.chameleon import node_stack
from chi_helpers.chameleon.reservation import next_block
from chi_helpers.series import notebooks_for
from chi_helpers.variants import Variant

# What the VM opens: SSH, Jupyter and MLflow. The object store listens on the node's loopback only (it is
# archived and unpatched), so 9000/9001 stay closed.
SECURITY_GROUP_PORTS = {"ssh": 22, "jupyter": 8888, "mlflow": 8000}


@dataclass(frozen=True)
class Action:
    notebook: str
    where: str  # "python-chi" (a cloud call from here), "node" (a shell command on the node), "here"
    what: str


def plan(profile: Variant, lease_name: str, node_name: str | None, project: str, site: str, user: str,
         repo: str | None = None, ref: str = "main", hours: int = 3) -> list[Action]:
    """Every step of the series on Chameleon, checked inputs first."""
    parameters.check(profile.name, "chameleon", lease_name=lease_name, user=user)
    if profile.reservation == "node":
        parameters.check_name("node_name", node_name, profile.default_node or f"a {profile.node_type} host")
    start, end = next_block(hours=hours)
    server_name = f"node-mlflow-{user}"
    address = "<floating IP>"
    actions: list[Action] = []

    def add(notebook: str, where: str, *whats: str) -> None:
        actions.extend(Action(notebook, where, w) for w in whats)

    # No project: an application credential's own (Keystone refuses another); the sign-in check
    # stops a run that has neither.
    context = ((f"context.use_project({project!r})" if project else "(no use_project: the credential's own project)"),
               f"context.use_site({site!r})")
    add("01_reserve", "python-chi", *context)
    if profile.reservation == "node":
        add("01_reserve", "python-chi",
            f"blazar host list: {node_name} exists and is a {profile.node_type}",
            f"lease.Lease({lease_name!r}, start_date={start:%Y-%m-%d %H:%M} UTC, end_date={end:%Y-%m-%d %H:%M} UTC)"
            f".add_node_reservation(amount=1, node_name={node_name!r})")
    else:
        add("01_reserve", "python-chi",
            f"lease.Lease({lease_name!r}, start_date={start:%Y-%m-%d %H:%M} UTC, end_date={end:%Y-%m-%d %H:%M} UTC)"
            f".add_flavor_reservation(name={profile.node_type!r}, amount=1)")
    add("01_reserve", "python-chi", ".submit(idempotent=True, wait_for_active=False)")
    add("01_reserve", "here", "wait until the lease is ACTIVE (a line a minute saying when it starts)")

    add("02_server", "python-chi", *context)
    placement = ("reservation_id=<the lease's host reservation>" if profile.reservation == "node"
                 else "flavor_name=<the lease's reserved flavor>")
    add("02_server", "python-chi",
        f"server.Server({server_name!r}, {placement}, image_name={profile.image!r}).submit(idempotent=True)",
        ".associate_floating_ip()  # only when Neutron shows none on the server yet",
        "wait until Nova lists the address (seconds after Neutron binds it)",
        ".check_connectivity()  # TCP 22")
    if profile.needs_security_groups:
        for name, port in SECURITY_GROUP_PORTS.items():
            add("02_server", "python-chi", f"SecurityGroup allow-{port} ({name}, tcp {port}).submit(idempotent=True); "
                                           f"add_security_group('allow-{port}') unless the server has it")
    if not repo:
        add("02_server", "here", f"git bundle create {node_setup.BUNDLE} HEAD (this copy and its history); upload to the node")
    for step in node_setup.steps(profile, repo=repo, ref=ref):
        add("02_server", "node", step.command)
    add("02_server", "node", node_setup.image_build_check().command)

    add("03_data", "node", *node_stack.data_commands())
    add("04_stack", "node", *node_stack.tracking_up_commands(address),
        node_setup.image_build_check().command, node_stack.jupyter_run_command(profile, address),
        node_stack.jupyter_url_command())

    for entry in notebooks_for("chameleon"):
        if entry.side != "node":
            continue
        notebook = entry.name.removesuffix(".ipynb")
        add(notebook, "node", *node_stack.node_notebook_commands(profile.name, entry.name))
        add(notebook, "here", f"download {node_stack.executed_path(profile.name, entry.name)} into the report")

    add("08_release", "python-chi", *context)
    add("08_release", "node", *node_stack.stop_commands())
    add("08_release", "python-chi",
        f"server.delete_server(<id of {server_name}>)",
        "network.deallocate_floating_ip(<its floating IP>)",
        f"lease.get_lease({lease_name!r}).delete()")
    return actions


def render(actions: list[Action]) -> str:
    side = {entry.name.removesuffix(".ipynb"): entry.side for entry in notebooks_for("chameleon")}
    lines, current = [], None
    for number, action in enumerate(actions, 1):
        if action.notebook != current:
            current = action.notebook
            where = "papermill here" if side[current] == "testbed" else "papermill in the node's Jupyter container"
            lines.append(f"\n[{current}: {where}]")
        lines.append(f"{number:3d}. {action.where:<10} {action.what}")
    return "\n".join(lines).lstrip("\n")
