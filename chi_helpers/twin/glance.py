"""Glance (image API v2), as far as python-chi 1.2.10 and glanceclient use it: reading images.

Mounted at `/image` (the catalog's endpoint; glanceclient adds `/v2/...` itself). As Glance does:

- `GET /image/` answers 300 with the versions, `GET /image/versions` 200 with the same list;
- `GET /v2/images` lists what the project may see (public and community-listed images it asks for,
  its own, shared ones), newest first; filters `name`, `id`, `status`, `visibility`, `owner`,
  `container_format`, `disk_format` (with `in:a,b`), `tag`, `os_hidden` (hidden images are left out
  unless asked for) and any image property (`build-repo=...`, which python-chi uses); `limit`
  (default 25, at most 1000) and `marker`, with a `next` link while a page is full;
- `GET /v2/images/<id>`, and the schemas glanceclient builds its models from
  (`/v2/schemas/image`, `/v2/schemas/images`);
- reading images needs the `reader` role in the token (glance/policies/image.py: get_images and
  get_image are "role:reader and project_id:..." under secure RBAC, the defaults since 2023.2): without
  it the list is 403 and one image 404 (glance/api/v2/policy.py ImageAPIPolicy._enforce hides it);
- errors are webob's HTML pages, as Glance sends them (glanceclient reads the text out of them).
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from urllib.parse import unquote, urlencode

from .keystone import has_role
from .web import Fault, Reply, Request, Service, reply

VERSIONS = ["2.16", "2.15", "2.14", "2.13", "2.12", "2.11", "2.10", "2.9", "2.8", "2.7", "2.6", "2.5", "2.4",
            "2.3", "2.2", "2.1", "2.0"]
DEFAULT_LIMIT, MAX_LIMIT = 25, 1000
CC_IMAGES = "https://github.com/ChameleonCloud/cc-images"
OWNER = "openstack"  # Chameleon's images belong to the admin project
TITLES = {300: "Multiple Choices", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
          405: "Method Not Allowed", 409: "Conflict"}

CORE = {  # the image properties Glance itself defines; anything else is an additional (string) property
    "id": {"type": "string", "pattern": "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$",
           "description": "An identifier for the image"},
    "name": {"type": ["null", "string"], "maxLength": 255, "description": "Descriptive name for the image"},
    "status": {"type": "string", "readOnly": True, "description": "Status of the image",
               "enum": ["queued", "saving", "active", "killed", "deleted", "uploading", "importing",
                        "pending_delete", "deactivated"]},
    "visibility": {"type": "string", "enum": ["community", "public", "private", "shared"],
                   "description": "Scope of image accessibility"},
    "protected": {"type": "boolean", "description": "If true, image will not be deletable."},
    "os_hidden": {"type": "boolean", "description": "If true, image will not appear in default image list response."},
    "checksum": {"type": ["null", "string"], "readOnly": True, "maxLength": 32, "description": "md5 hash of image contents."},
    "os_hash_algo": {"type": ["null", "string"], "readOnly": True, "maxLength": 64,
                     "description": "Algorithm to calculate the os_hash_value"},
    "os_hash_value": {"type": ["null", "string"], "readOnly": True, "maxLength": 128,
                      "description": "Hexdigest of the image contents using the algorithm specified by the os_hash_algo"},
    "owner": {"type": ["null", "string"], "maxLength": 255, "description": "Owner of the image"},
    "size": {"type": ["null", "integer"], "readOnly": True, "description": "Size of image file in bytes"},
    "virtual_size": {"type": ["null", "integer"], "readOnly": True, "description": "Virtual size of image in bytes"},
    "container_format": {"type": ["null", "string"], "description": "Format of the container",
                         "enum": [None, "ami", "ari", "aki", "bare", "ovf", "ova", "docker", "compressed"]},
    "disk_format": {"type": ["null", "string"], "description": "Format of the disk",
                    "enum": [None, "ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso", "ploop"]},
    "created_at": {"type": "string", "readOnly": True, "description": "Date and time of image registration"},
    "updated_at": {"type": "string", "readOnly": True, "description": "Date and time of the last image modification"},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 255}, "description": "List of strings related to the image"},
    "direct_url": {"type": "string", "readOnly": True, "description": "URL to access the image file kept in external store"},
    "min_ram": {"type": "integer", "description": "Amount of ram (in MB) required to boot image."},
    "min_disk": {"type": "integer", "description": "Amount of disk space (in GB) required to boot image."},
    "self": {"type": "string", "readOnly": True, "description": "An image self url"},
    "file": {"type": "string", "readOnly": True, "description": "An image file url"},
    "stores": {"type": "string", "readOnly": True, "description": "Store in which image data resides."},
    "schema": {"type": "string", "readOnly": True, "description": "An image schema url"},
    "locations": {"type": "array", "items": {"type": "object"}, "description": "A set of URLs to access the image file kept in external store"},
}
FILTERABLE = ("name", "id", "status", "visibility", "owner", "container_format", "disk_format")


def image_schema() -> dict:
    return {
        "name": "image", "properties": CORE, "additionalProperties": {"type": "string"},
        "links": [{"rel": "self", "href": "{self}"}, {"rel": "enclosure", "href": "{file}"},
                  {"rel": "describedby", "href": "{schema}"}],
    }


def images_schema() -> dict:
    return {
        "name": "images",
        "properties": {"images": {"type": "array", "items": image_schema()},
                       "schema": {"type": "string"}, "first": {"type": "string"}, "next": {"type": "string"}},
        "links": [{"rel": "first", "href": "{first}"}, {"rel": "next", "href": "{next}"},
                  {"rel": "describedby", "href": "{schema}"}],
    }


class Glance(Service):
    prefix = "/image"
    name = "glance"
    routes = [
        ("GET", "/", "versions_choice"),
        ("GET", "/versions", "versions"),
        ("GET", "/v2", "versions_choice"),
        ("GET", "/v2/images", "list_images"),
        ("GET", "/v2/images/(?P<image>[^/]+)", "get_image"),
        ("GET", "/v2/schemas/image", "get_image_schema"),
        ("GET", "/v2/schemas/images", "get_images_schema"),
    ]

    def error_body(self, status, message):
        if status == 401:  # keystonemiddleware's answer
            return {"error": {"code": 401, "title": "Unauthorized", "message": message}}
        title = f"{status} {TITLES.get(status, 'Error')}"
        return (f"<html>\n <head>\n  <title>{title}</title>\n </head>\n <body>\n  <h1>{title}</h1>\n"
                f"  {message}<br /><br />\n\n\n\n </body>\n</html>")

    def handle(self, request: Request) -> Reply:
        try:
            if request.path not in ("/", "/versions", "/v2") and not request.token().get("project"):
                raise Fault(403, "You are not authorized to complete this action.")
            answer = super().handle(request)
        except Fault as fault:
            if fault.status != 401:
                fault.headers.setdefault("Content-Type", "text/html; charset=UTF-8")
            raise
        answer.headers.setdefault("x-openstack-request-id", f"req-{self.world.new_id()}")
        return answer

    # --- versions -----------------------------------------------------------------------------

    def _versions(self) -> dict:
        shown = []
        for number, version in enumerate(VERSIONS):
            shown.append({"id": f"v{version}", "status": "CURRENT" if number == 0 else "SUPPORTED",
                          "links": [{"rel": "self", "href": self.world.url("/image/v2/")}]})
        return {"versions": shown}

    def versions_choice(self, request: Request):
        return reply(300, self._versions())

    def versions(self, request: Request):
        return reply(200, self._versions())

    # --- images -------------------------------------------------------------------------------

    def _visible(self, request: Request, listing: bool) -> list[dict]:
        project = request.token()["project"]["id"]
        asked = request.arg("visibility")
        shown = []
        for image in self.world.data["images"].values():
            visibility = image.get("visibility", "public")
            mine = image.get("owner") == project
            member = project in (image.get("_members") or [])
            if visibility == "public" or mine or (visibility == "shared" and member):
                shown.append(image)
            elif visibility == "community" and (not listing or asked in ("community", "all")):
                shown.append(image)
        return shown

    def _show(self, image: dict) -> dict:
        body = {k: v for k, v in image.items() if not k.startswith("_")}
        body["self"] = f"/v2/images/{image['id']}"
        body["file"] = f"/v2/images/{image['id']}/file"
        body["schema"] = "/v2/schemas/image"
        return body

    @staticmethod
    def _matches(value, wanted: str) -> bool:
        if wanted.startswith("in:"):
            return str(value) in [w.strip('"') for w in wanted[3:].split(",")]
        return str(value) == wanted if not isinstance(value, bool) else str(value).lower() == wanted.lower()

    def list_images(self, request: Request):
        if not has_role(request.token(), "reader"):  # glance/common/exception.py Forbidden
            raise Fault(403, "You are not authorized to complete get_images action.")
        images = self._visible(request, listing=True)
        for key, values in request.query.items():
            if key in ("limit", "marker", "sort_key", "sort_dir", "sort", "member_status", "tag", "os_hidden"):
                continue
            wanted = values[0]
            if key == "visibility":
                if wanted not in ("public", "private", "shared", "community", "all"):
                    raise Fault(400, f"Invalid visibility value: {wanted}")
                if wanted != "all":
                    images = [i for i in images if i.get("visibility", "public") == wanted]
                continue
            images = [i for i in images if key in i and self._matches(i[key], wanted)]
        for tag in request.query.get("tag", []):
            images = [i for i in images if tag in (i.get("tags") or [])]
        hidden = (request.arg("os_hidden") or "false").lower()
        if hidden not in ("true", "false"):
            raise Fault(400, f"Invalid value for os_hidden: {hidden}")
        images = [i for i in images if bool(i.get("os_hidden", False)) == (hidden == "true")]
        images = self._sorted(images, request)
        marker = request.arg("marker")
        if marker is not None:
            ids = [i["id"] for i in images]
            if marker not in ids:
                raise Fault(400, f"No image found with ID {marker}")
            images = images[ids.index(marker) + 1:]
        limit = request.arg("limit")
        try:
            limit = DEFAULT_LIMIT if limit is None else int(limit)
        except ValueError:
            raise Fault(400, "limit param must be an integer") from None
        if limit < 0:
            raise Fault(400, "limit param must be positive")
        page = images[:min(limit, MAX_LIMIT)]
        body = {"images": [self._show(i) for i in page], "first": "/v2/images", "schema": "/v2/schemas/images"}
        if page and len(page) == min(limit, MAX_LIMIT):
            params = [(k, v) for k, values in request.query.items() if k != "marker" for v in values]
            params.append(("marker", page[-1]["id"]))
            body["next"] = "/v2/images?" + urlencode(params)
        return reply(200, body)

    def _sorted(self, images: list[dict], request: Request) -> list[dict]:
        if request.arg("sort"):
            keys = []
            for part in request.arg("sort").split(","):
                key, _, direction = part.strip().partition(":")
                keys.append((key, direction or "desc"))
        else:
            directions = request.query.get("sort_dir", ["desc"])
            keys = [(key, directions[min(n, len(directions) - 1)])
                    for n, key in enumerate(request.query.get("sort_key", ["created_at"]))]
        for key, direction in keys:
            if direction not in ("asc", "desc"):
                raise Fault(400, f"Invalid sort direction: {direction}")
            if key not in CORE:
                raise Fault(400, f"Invalid sort key: {key}. It must be one of the following: "
                                 + ", ".join(k for k in CORE if k not in ("tags", "locations", "self", "file", "schema")))
        if "id" not in [k for k, _ in keys]:
            keys.append(("id", keys[-1][1] if keys else "desc"))
        for key, direction in reversed(keys):  # stable sorts, least significant key first
            images = sorted(images, key=lambda i: (i.get(key) is None, str(i.get(key) or "")),
                            reverse=direction == "desc")
        return images

    def get_image(self, request: Request):
        ident = unquote(request.param("image"))
        if not has_role(request.token(), "reader"):  # Forbidden on get_image becomes webob's bare NotFound
            raise Fault(404, "The resource could not be found.")
        for image in self._visible(request, listing=False):
            if image["id"] == ident:
                return reply(200, self._show(image))
        raise Fault(404, f"No image found with ID {ident}")

    def get_image_schema(self, request: Request):
        return reply(200, image_schema())

    def get_images_schema(self, request: Request):
        return reply(200, images_schema())


# --- inventory ------------------------------------------------------------------------------------------

IMAGES = [  # (name, build variant, size in bytes): what the variants boot, and python-chi's default
    ("CC-Ubuntu24.04", "base", 4_531_290_112),
    ("CC-Ubuntu24.04-CUDA", "gpu", 12_884_901_888),
    ("CC-Ubuntu24.04-ROCm", "gpu", 19_327_352_832),
    ("CC-Ubuntu22.04", "base", 4_294_967_296),  # chi.server.DEFAULT_IMAGE_NAME in python-chi 1.2.10
]


def seed_inventory(world) -> None:
    """Chameleon's supported images the series uses, unless they are there already."""
    have = {i.get("name") for i in world.data["images"].values()}
    built = world.now() - timedelta(days=30)
    for number, (name, variant, size) in enumerate(IMAGES):
        if name in have:
            continue
        ident = world.new_id()
        stamp = (built + timedelta(minutes=number)).strftime("%Y-%m-%dT%H:%M:%SZ")
        release = name.split("-")[1].replace("Ubuntu", "")
        world.data["images"][ident] = {
            "id": ident, "name": name, "status": "active", "visibility": "public", "protected": False,
            "os_hidden": False, "owner": OWNER, "container_format": "bare", "disk_format": "qcow2",
            "checksum": hashlib.md5(name.encode()).hexdigest(), "os_hash_algo": "sha512",
            "os_hash_value": hashlib.sha512(name.encode()).hexdigest(), "size": size, "virtual_size": None,
            "min_ram": 0, "min_disk": 0, "tags": [], "created_at": stamp, "updated_at": stamp,
            "build-repo": CC_IMAGES, "build-os": "ubuntu", "build-os-version": release, "build-variant": variant,
            "build-tag": name.lower(), "build-timestamp": str(int((built + timedelta(minutes=number)).timestamp())),
            "stores": "rbd",
        }


def services(world) -> list[Service]:
    return [Glance(world)]
