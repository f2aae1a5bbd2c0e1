"""One Keystone per site: each Chameleon site is its own OpenStack, so a credential (and a token) made at
CHI@TACC is unknown at KVM@TACC. The twin gives KVM@TACC its own address in the site list, with its own
Keystone, credentials, RC file and catalog; the state behind the services (leases, servers) is shared."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
import requests

from chi_helpers.chameleon import login, openstack_rc
from chi_helpers.chameleon.login import LoginError


def sites(twin) -> dict[str, str]:
    items = requests.get(f"{twin.url}/api/sites.json", timeout=5).json()["items"]
    return {item["name"]: item["web"] for item in items}


def sign_in(url: str, env: dict) -> requests.Response:
    return requests.post(f"{url}/v3/auth/tokens", timeout=5, json={"auth": {"identity": {
        "methods": ["application_credential"], "application_credential": {
            "id": env["OS_APPLICATION_CREDENTIAL_ID"], "secret": env["OS_APPLICATION_CREDENTIAL_SECRET"]}}}})


def kvm_url(twin) -> str:
    return f"{sites(twin)['KVM@TACC']}:5000"


def test_kvm_at_tacc_has_its_own_address_in_the_site_list(twin):
    web = sites(twin)
    assert web["CHI@TACC"] == f"http://{urlsplit(twin.url).hostname}"
    assert web["KVM@TACC"] != web["CHI@TACC"] and urlsplit(web["KVM@TACC"]).hostname.startswith("127.")
    # Keystone answers there on python-chi's port (auth_url = <web>:5000/v3)
    assert requests.get(f"{web['KVM@TACC']}:5000/v3", timeout=5).json()["version"]["id"].startswith("v3")


def test_a_credential_works_only_at_the_site_that_made_it(twin):
    chi_tacc, kvm = twin.environment(), twin.kvm_environment()
    assert sign_in(twin.url, chi_tacc).status_code == 201
    assert sign_in(kvm_url(twin), kvm).status_code == 201
    refused = sign_in(kvm_url(twin), chi_tacc)  # before: one Keystone took every site's credentials
    assert refused.status_code == 401
    assert refused.json()["error"]["message"] == "The request you have made requires authentication."
    assert sign_in(twin.url, kvm).status_code == 401


def test_a_token_is_taken_only_by_its_own_sites_services(twin):
    token = sign_in(twin.url, twin.environment()).headers["X-Subject-Token"]
    headers = {"X-Auth-Token": token}
    assert requests.get(f"{twin.url}/reservation/v1/leases", headers=headers, timeout=5).status_code == 200
    elsewhere = requests.get(f"{kvm_url(twin)}/reservation/v1/leases", headers=headers, timeout=5)
    assert elsewhere.status_code == 401
    validated = requests.get(f"{kvm_url(twin)}/v3/auth/tokens", timeout=5,
                             headers={"X-Auth-Token": token, "X-Subject-Token": token})
    assert validated.status_code == 401


def test_each_sites_catalog_names_its_own_services(twin):
    token = sign_in(kvm_url(twin), twin.kvm_environment()).json()["token"]
    endpoints = [e for service in token["catalog"] for e in service["endpoints"]]
    assert {e["region"] for e in endpoints} == {"KVM@TACC"}
    assert all(e["url"].startswith(kvm_url(twin)) for e in endpoints)
    at_chi_tacc = sign_in(twin.url, twin.environment()).json()["token"]
    assert "KVM@TACC" not in {e["region"] for s in at_chi_tacc["catalog"] for e in s["endpoints"]}


def test_the_kvm_rc_file_is_the_one_kvm_at_tacc_hands_out(twin):
    chi_tacc, kvm = twin.environment(), twin.kvm_environment()
    assert twin.kvm_rc_file.name == "twin-kvm-openrc.sh" and twin.kvm_rc_file.parent == twin.rc_file.parent
    assert kvm["OS_REGION_NAME"] == "KVM@TACC" and kvm["OS_AUTH_URL"] == f"{kvm_url(twin)}/v3"
    assert kvm["OS_APPLICATION_CREDENTIAL_ID"] != chi_tacc["OS_APPLICATION_CREDENTIAL_ID"]
    for same in ("CHI_RESOURCE_API_URL", "CHI_SERIES_ALLOWED_NETWORKS", "OS_KEYPAIR_PRIVATE_KEY"):
        assert kvm[same] == chi_tacc[same]
    token = sign_in(kvm_url(twin), kvm).json()["token"]
    assert token["application_credential"]["restricted"] is False  # it makes leases, as the other does


# --- python-chi and the series ---------------------------------------------------------------------


def at_kvm(rc_file) -> None:
    from chi import context

    login.check(str(rc_file))
    context.use_site("KVM@TACC")
    login.follow_site_list("KVM@TACC")


def test_python_chi_reserves_at_kvm_with_the_kvm_rc_file(twin, clean_environment, chi_at_twin):
    import chi.lease
    from chi import context

    at_kvm(twin.kvm_rc_file)
    login.verify()
    assert context.get("auth_url") == f"{kvm_url(twin)}/v3"
    assert chi.lease.blazar().lease.list() == []


def test_a_chi_at_tacc_credential_at_kvm_names_the_mismatch(twin, clean_environment, chi_at_twin):
    at_kvm(twin.rc_file)
    with pytest.raises(LoginError) as error:
        login.verify()  # before: "Keystone refused these credentials (401)", and nothing about the site
    message = str(error.value)
    assert "this credential is from CHI@TACC; the vm variant runs at KVM@TACC" in message
    assert "download the RC file from KVM@TACC's dashboard" in message


def test_a_credential_without_a_region_is_placed_by_its_auth_url(twin, clean_environment, chi_at_twin, tmp_path):
    values = openstack_rc.parse(twin.rc_file.read_text())
    del values["OS_REGION_NAME"]
    no_region = tmp_path / "no-region-openrc.sh"
    no_region.write_text("".join(f"export {key}={value}\n" for key, value in values.items()))
    at_kvm(no_region)
    with pytest.raises(LoginError, match="this credential is from CHI@TACC; the vm variant runs at KVM@TACC"):
        login.verify()
