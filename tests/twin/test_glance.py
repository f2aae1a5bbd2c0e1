"""The twin's Glance, through python-chi and glanceclient as they are (no mocks)."""

from __future__ import annotations

import pytest
import requests

VARIANT_IMAGES = ["CC-Ubuntu24.04-CUDA", "CC-Ubuntu24.04-ROCm", "CC-Ubuntu24.04"]


def token(twin) -> str:
    env = twin.environment()
    answer = requests.post(f"{twin.url}/v3/auth/tokens", timeout=5, json={"auth": {"identity": {
        "methods": ["application_credential"], "application_credential": {
            "id": env["OS_APPLICATION_CREDENTIAL_ID"], "secret": env["OS_APPLICATION_CREDENTIAL_SECRET"]}}}})
    return answer.headers["X-Subject-Token"]


def test_versions_and_authentication(twin):
    root = requests.get(f"{twin.url}/image/", timeout=5)
    assert root.status_code == 300
    versions = root.json()["versions"]
    assert versions[0]["status"] == "CURRENT" and versions[0]["links"][0]["href"].endswith("/image/v2/")
    assert requests.get(f"{twin.url}/image/versions", timeout=5).json() == root.json()
    assert requests.get(f"{twin.url}/image/v2/images", timeout=5).status_code == 401


def test_python_chi_looks_images_up_by_name(chi):
    import chi.image
    from chi.exception import CHIValueError

    from chi_helpers.variants import VARIANTS

    assert {v.image for v in VARIANTS.values()} <= set(VARIANT_IMAGES)
    for name in VARIANT_IMAGES:
        image = chi.image.get_image(name)
        assert image.name == name and image.is_chameleon_supported and image.uuid
        assert chi.image.get_image_id(name) == image.uuid
        assert chi.image.get_image_name(image.uuid) == name
    with pytest.raises(CHIValueError, match="No images found"):
        chi.image.get_image("CC-Ubuntu10.04")
    with pytest.raises(CHIValueError, match="No image found with ID"):
        chi.image.get_image_name("00000000-0000-0000-0000-000000000000")
    supported = {i.name for i in chi.image.list_images(is_chameleon_supported=True)}
    assert set(VARIANT_IMAGES) <= supported


def test_paging_filters_and_visibility(chi, twin):
    from chi.clients import glance

    world = twin.world
    project = next(iter(world.data["projects"]))
    for owner, visibility, name in ((project, "private", "mine"), ("someone-else", "private", "theirs"),
                                    ("someone-else", "community", "community")):
        ident = world.new_id()
        world.data["images"][ident] = {"id": ident, "name": name, "status": "active", "visibility": visibility,
                                       "owner": owner, "created_at": "2020-01-01T00:00:00Z",
                                       "updated_at": "2020-01-01T00:00:00Z", "tags": [], "os_hidden": False,
                                       "container_format": "bare", "disk_format": "qcow2"}
    client = glance()
    everything = [i.name for i in client.images.list(page_size=1)]  # one request per image, following `next`
    assert set(everything) == set(VARIANT_IMAGES) | {"CC-Ubuntu22.04", "mine"}
    assert everything[-1] == "mine"  # newest first
    assert [i.name for i in client.images.list(filters={"visibility": "community"})] == ["community"]
    assert [i.name for i in client.images.list(filters={"name": "in:mine,theirs"})] == ["mine"]

    headers = {"X-Auth-Token": token(twin)}
    page = requests.get(f"{twin.url}/image/v2/images?limit=2&name=CC-Ubuntu24.04", headers=headers, timeout=5).json()
    assert [i["name"] for i in page["images"]] == ["CC-Ubuntu24.04"] and "next" not in page
    page = requests.get(f"{twin.url}/image/v2/images?limit=2", headers=headers, timeout=5).json()
    assert len(page["images"]) == 2 and page["next"].startswith("/v2/images?limit=2&marker=")
    assert page["images"][0]["self"] == f"/v2/images/{page['images'][0]['id']}"
    missing = requests.get(f"{twin.url}/image/v2/images/nothing", headers=headers, timeout=5)
    assert missing.status_code == 404 and missing.headers["Content-Type"].startswith("text/html")
    bad = requests.get(f"{twin.url}/image/v2/images?marker=nothing", headers=headers, timeout=5)
    assert bad.status_code == 400


# --- a member-only application credential (glance/policies/image.py: get_images needs `reader`) -----------


def test_a_token_without_reader_may_not_list_images(twin, member_only_token):
    headers = {"X-Auth-Token": member_only_token}
    listing = requests.get(f"{twin.url}/image/v2/images?name=CC-Ubuntu24.04", headers=headers, timeout=5)
    assert listing.status_code == 403  # before: 200
    assert "You are not authorized to complete get_images action." in listing.text
    assert listing.headers["Content-Type"].startswith("text/html")
    image = next(iter(twin.world.data["images"]))
    # get_image: Forbidden becomes NotFound, so that it says nothing of the image (glance/api/v2/policy.py)
    assert requests.get(f"{twin.url}/image/v2/images/{image}", headers=headers, timeout=5).status_code == 404
    assert requests.get(f"{twin.url}/image/v2/images/{image}", headers={"X-Auth-Token": token(twin)},
                        timeout=5).status_code == 200
