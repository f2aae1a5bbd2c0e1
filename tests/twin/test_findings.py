"""What a first real run would have met, each shown against the twin through our helpers and the real
python-chi (see issue 9): every test here fails on the code before the fixes."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from chi_helpers.chameleon import login, reservation
from chi_helpers.chameleon.login import LoginError
from chi_helpers.variants import VARIANTS

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def signed_in(twin, clean_environment, chi_at_twin):
    login.sign_in(str(twin.rc_file), "", "CHI@TACC", say=lambda _: None)
    return twin


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    from chi_helpers import network_guard as guard

    return subprocess.run([sys.executable, "-m", "chi_helpers", *args], capture_output=True, text=True, cwd=REPO,
                          env=guard.environment({k: v for k, v in (env or {}).items()}), timeout=120)


def base_env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "CHI_RESOURCE"))}


# --- headless login -----------------------------------------------------------------------------

def test_a_fresh_process_signs_in_from_the_rc_file(twin):
    # Before: the CLI never loaded credentials, so release died inside keystoneauth (no auth_url).
    done = cli("release", "--rc-file", str(twin.rc_file), "--lease-name", "mlflow_nobody", "--user", "nobody",
               env=base_env())
    assert done.returncode == 0, done.stderr[-2000:]
    assert "no lease named mlflow_nobody: nothing to end" in done.stdout
    assert "sign in: application credential" in done.stdout


def test_an_application_credential_with_a_project_is_not_scoped(twin, clean_environment, chi_at_twin):
    # Before: use_project put a scope on the application credential, and Keystone answered 401.
    account = login.sign_in(str(twin.rc_file), "CHI-000000", "CHI@TACC", say=lambda _: None)
    assert account.project is None
    import chi.lease

    assert chi.lease.blazar().lease.list() == []


def test_keystone_refusing_is_a_sentence(twin, clean_environment, chi_at_twin):
    twin.world.inject("keystone-refuses")
    with pytest.raises(LoginError) as error:
        login.sign_in(str(twin.rc_file), "", "CHI@TACC", say=lambda _: None)
    assert "Keystone refused these credentials (401)" in str(error.value) and "--rc-file" in str(error.value)


def test_the_key_pair_is_checked_before_a_server_is_asked_for(twin, clean_environment, chi_at_twin):
    rc = twin.rc_file.read_text().replace("OS_KEYPAIR_PUBLIC_KEY=", "OS_KEYPAIR_PUBLIC_KEY=/nonexistent")
    broken = twin.rc_file.with_name("no-key-openrc.sh")
    broken.write_text(rc)
    with pytest.raises(LoginError) as error:
        login.sign_in(str(broken), "", "CHI@TACC", need_key_pair=True, say=lambda _: None)
    assert "OS_KEYPAIR_PUBLIC_KEY" in str(error.value)


# --- lease names --------------------------------------------------------------------------------

def lease_of(twin, name: str, node: str, start_in: timedelta, hours: int = 3):
    import chi.lease

    start = twin.world.now().replace(tzinfo=None, second=0, microsecond=0) + start_in
    made = chi.lease.Lease(name, start_date=start, end_date=start + timedelta(hours=hours))
    made.add_node_reservation(amount=1, node_name=node)
    made.submit(idempotent=False, wait_for_active=False)
    return made


def test_an_ended_lease_of_the_same_name_does_not_hide_the_live_one(signed_in):
    twin = signed_in
    old = lease_of(twin, "mlflow_ci01", "liqid02", timedelta(minutes=2), hours=1)
    # The twin shortens waits 600 times: the hour-long lease is over within seconds.
    import time

    for _ in range(100):
        if old.status == "TERMINATED":
            break
        time.sleep(0.1)
    assert old.status == "TERMINATED"
    live = lease_of(twin, "mlflow_ci01", "liqid01", timedelta(hours=1))
    found = reservation.existing_lease("mlflow_ci01")  # before: python-chi's get_lease failed, so None
    assert found is not None and found.id == live.id


def test_two_live_leases_of_one_name_are_named(signed_in):
    twin = signed_in
    lease_of(twin, "mlflow_ci02", "liqid01", timedelta(hours=1))
    lease_of(twin, "mlflow_ci02", "liqid02", timedelta(hours=1))
    with pytest.raises(reservation.ReservationError) as error:
        reservation.existing_lease("mlflow_ci02")
    assert "2 leases named 'mlflow_ci02' are live" in str(error.value)


def test_release_ends_the_live_lease_when_an_old_one_shares_its_name(signed_in):
    from chi_helpers.chameleon import release

    twin = signed_in
    lease_of(twin, "mlflow_ci03", "liqid02", timedelta(minutes=1), hours=1)
    import time

    time.sleep(7)  # the old one is over
    live = lease_of(twin, "mlflow_ci03", "liqid01", timedelta(hours=1))
    outcome = release.release("mlflow_ci03", "ci03", say=lambda _: None)
    assert outcome["lease"] == "ended lease mlflow_ci03"  # before: "no lease named ...", the live one ran on
    assert live.id not in twin.world.data["leases"]


# --- the Blazar client python-chi is written against ---------------------------------------------

def test_the_first_free_block_comes_from_the_hosts_allocations(signed_in):
    twin = signed_in
    lease_of(twin, "someone_else", "liqid01", timedelta(hours=1))
    profile = VARIANTS["nvidia"]
    # host.get_allocation exists only in chameleon-blazarclient (before: python-blazarclient 4.6.0).
    start, end = reservation.choose_window(profile, "liqid01", when="free", now=twin.world.now())
    busy = next(iter(twin.world.data["leases"].values()))
    assert start.replace(tzinfo=None) >= reservation._parse(busy["end_date"]).replace(tzinfo=None)


# --- the server ----------------------------------------------------------------------------------

def test_a_missing_server_is_a_sentence(signed_in):
    from chi_helpers.chameleon import run, server

    with pytest.raises(server.ServerError) as error:
        run.connect("nobody")  # before: get_server raised NotFound, which nothing caught
    assert "there is no server node-mlflow-nobody" in str(error.value)


# --- release at the variant's site ---------------------------------------------------------------

def test_release_of_the_vm_variant_goes_to_kvm(twin):
    done = cli("release", "--gpu", "vm", "--rc-file", str(twin.kvm_rc_file), "--lease-name", "mlflow_vm",
               "--user", "vm", env=base_env())
    assert done.returncode == 0, done.stderr[-2000:]
    requests_log = (twin.world.state_dir / "requests.log").read_text()
    assert "/api/sites.json" in requests_log
    assert "Now using KVM@TACC" in done.stdout  # before: CHI@TACC whatever the variant


def test_the_vm_variant_with_chi_at_tacc_s_rc_file_names_the_mismatch(twin):
    # Each site has its own Keystone: KVM@TACC does not know a CHI@TACC credential (401).
    done = cli("release", "--gpu", "vm", "--rc-file", str(twin.rc_file), "--lease-name", "mlflow_vm", "--user", "vm",
               env=base_env())
    assert done.returncode != 0
    assert "this credential is from CHI@TACC; the vm variant runs at KVM@TACC" in done.stdout + done.stderr


# --- a credential without the reader role ----------------------------------------------------------

def test_a_member_only_credential_is_told_to_add_reader_where_the_image_is_looked_up(twin, clean_environment,
                                                                                      chi_at_twin, tmp_path):
    """Chameleon's docs: a credential with only `member` gets 403 on the image list; add `reader`."""
    import time

    from chi_helpers.chameleon import server
    from chi_helpers.twin import control, keystone

    user = next(iter(twin.world.data["users"].values()))
    made = keystone.add_application_credential(twin.world, user["id"], user["projects"][0], "member-only",
                                               unrestricted=True, roles=["member"])
    member_only = tmp_path / "member-only-openrc.sh"
    control.write_rc(twin.world, member_only, made["id"], made["secret"])
    login.sign_in(str(member_only), "", "CHI@TACC", need_key_pair=True, say=lambda _: None)
    lease = lease_of(twin, "mlflow_ci04", "liqid01", timedelta(minutes=1))  # `member` may make leases
    for _ in range(100):
        if lease.status == "ACTIVE":
            break
        time.sleep(0.1)
    assert lease.status == "ACTIVE"
    with pytest.raises(server.ServerError) as error:
        server.bring_up(VARIANTS["nvidia"], lease, "ci04")  # before: glanceclient's HTTPForbidden, unexplained
    message = str(error.value)
    assert "403" in message and "reader" in message and "application credential" in message
    assert not twin.world.data["servers"]
