"""What cloud-init's OpenStack datasource asks the metadata service, and what
it makes of the answers.

The requests, their order, their URLs and the parsing follow cloud-init
(DataSourceOpenStack.wait_for_metadata_service and _crawl_metadata, then
sources/helpers/openstack.py MetadataReader.read_v2, then
sources/helpers/ec2.py get_instance_metadata with its MetadataMaterializer
and MetadataLeafDecoder). Two differences, both to fail closed: no retries
(cloud-init retries connection errors; here a lost request fails the test),
and an EC2 crawl error propagates instead of becoming `{}`. One base URL is
probed: the first argument, else http://169.254.169.254 (cloud-init 23.1
and later try http://[fe80::a9fe:a9fe%<iface>] first; pass that to crawl
over IPv6).

Prints one JSON object: the version listing and the version chosen, the
datasource's results (binary user data as base64, random_seed as its decoded
length) and every request made with its status and content type.
"""

import base64
import json
import sys
import urllib.error
import urllib.parse
import urllib.request

BASE_URL = sys.argv[1] if len(sys.argv) > 1 else "http://169.254.169.254"
# helpers/openstack.py OS_VERSIONS: the versions cloud-init knows, oldest first.
OS_VERSIONS = (
    "2012-08-10",
    "2013-04-04",
    "2013-10-17",
    "2015-10-15",
    "2016-06-30",
    "2016-10-06",
    "2017-02-22",
    "2018-08-27",
)
OS_LATEST = "latest"
TIMEOUT = 5

REQUESTS = []
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class HttpError(Exception):
    def __init__(self, url, code):
        super().__init__(f"{url}: HTTP {code}")
        self.code = code


def combine_url(base, *add_ons):
    """url_helper.combine_url."""

    def combine_single(url, add_on):
        parsed = list(urllib.parse.urlparse(url))
        path = parsed[2]
        if path and not path.endswith("/"):
            path += "/"
        path += urllib.parse.quote(str(add_on), safe="/:")
        parsed[2] = path
        return urllib.parse.urlunparse(parsed)

    url = base
    for add_on in add_ons:
        url = combine_single(url, add_on)
    return url


def readurl(url):
    """url_helper.readurl: the body of a GET; a status >= 400 raises."""
    request = urllib.request.Request(url, headers={"User-Agent": "Cloud-Init/24.4"})
    try:
        with OPENER.open(request, timeout=TIMEOUT) as response:
            body = response.read()
            status, content_type = response.status, response.headers.get("Content-Type")
    except urllib.error.HTTPError as err:
        REQUESTS.append({"url": url, "status": err.code, "content_type": err.headers.get("Content-Type")})
        raise HttpError(url, err.code) from None
    REQUESTS.append({"url": url, "status": status, "content_type": content_type})
    return body


def load_json(text, root_types=(dict,)):
    """util.load_json."""
    decoded = json.loads(text.decode() if isinstance(text, bytes) else text)
    if not isinstance(decoded, root_types):
        raise TypeError(f"JSON root is {type(decoded).__name__}, not one of {root_types}")
    return decoded


def load_json_anytype(text):
    return load_json(text, root_types=(dict, list, str))


def wait_for_metadata_service():
    """wait_for_url on <base>/openstack: a non-empty 200 means it is there."""
    url = combine_url(BASE_URL, "openstack")
    if not readurl(url):
        raise RuntimeError(f"{url}: empty response")
    return BASE_URL


def find_working_version(base_url):
    """MetadataReader._fetch_available_versions, then _find_working_version."""
    content = readurl(combine_url(base_url, "openstack")).decode()
    available = [line.strip() for line in content.splitlines() if line.strip()]
    selected = OS_LATEST
    for version in reversed(OS_VERSIONS):
        if version in available:
            selected = version
            break
    return available, selected


def read_v2(base_url):
    available, version = find_working_version(base_url)
    # datafiles(version): name -> (path, required, translator), in this order.
    files = {
        "metadata": (combine_url("openstack", version, "meta_data.json"), True, load_json),
        "userdata": (combine_url("openstack", version, "user_data"), False, None),
        "vendordata": (combine_url("openstack", version, "vendor_data.json"), False, load_json_anytype),
        "vendordata2": (combine_url("openstack", version, "vendor_data2.json"), False, load_json_anytype),
        "networkdata": (combine_url("openstack", version, "network_data.json"), False, load_json_anytype),
    }
    results = {"userdata": "", "version": 2}
    for name, (path, required, translator) in files.items():
        url = combine_url(base_url, path)
        try:
            data = readurl(url)
        except HttpError:
            if required:
                raise
            continue
        results[name] = translator(data) if translator else data

    metadata = results["metadata"]
    if "random_seed" in metadata:
        metadata["random_seed"] = base64.b64decode(metadata["random_seed"])
    if "dsmode" in metadata.get("meta", {}):
        results["dsmode"] = metadata["meta"]["dsmode"]
    results["ec2-metadata"] = get_instance_metadata()
    # KEY_COPIES: cloud-init's names for two of nova's keys.
    for target_key, source_key, is_required in (
        ("local-hostname", "hostname", False),
        ("instance-id", "uuid", True),
    ):
        if is_required and source_key not in metadata:
            raise RuntimeError(f"No '{source_key}' entry in metadata")
        if source_key in metadata:
            metadata[target_key] = metadata.get(source_key)
    return available, version, results


def decode_leaf(blob):
    """MetadataLeafDecoder."""
    if not blob:
        return ""
    try:
        blob = blob.decode()
    except UnicodeDecodeError:
        return blob
    text = blob.strip()
    if text.startswith("{") and text.endswith("}"):
        try:
            return json.loads(blob)
        except ValueError:
            pass
    if blob.find("\n") != -1:
        return blob.splitlines()
    return blob


def parse_listing(blob):
    """MetadataMaterializer._parse: `name/` is a directory, `N=name` is
    public key N (its key at `N/openssh-key`), anything else a leaf."""
    leaves, children = {}, []
    for field in blob.decode().splitlines():
        field = field.strip()
        field_name = field.rstrip("/") if field.endswith("/") else field
        if not field or not field_name:
            continue
        if field_name == "security-credentials":
            continue
        if field.endswith("/"):
            if field_name not in children:
                children.append(field_name)
        else:
            resource = field_name
            contents = field.split("=", 1)
            if len(contents) > 1:
                ident, sub_contents = contents
                try:
                    ident = int(ident)
                except ValueError:
                    ident = None
                if ident is not None:
                    resource = f"{ident}/openssh-key"
                    field_name = sub_contents
            leaves[field_name] = resource
    return leaves, children


def materialize(blob, base_url):
    leaves, children = parse_listing(blob)
    joined = {}
    for child in children:
        child_url = combine_url(base_url, child)
        if not child_url.endswith("/"):
            child_url += "/"
        joined[child] = materialize(readurl(child_url), child_url)
    for field, resource in leaves.items():
        value = decode_leaf(readurl(combine_url(base_url, resource)))
        if field in joined:
            raise RuntimeError(f"duplicate key {field} in {base_url}")
        joined[field] = value
    return joined


def get_instance_metadata(api_version="latest"):
    # 'meta-data' explicitly has a trailing / (cloud-init: LP: #1356855).
    md_url = combine_url(BASE_URL, api_version, "meta-data/")
    return materialize(readurl(md_url), md_url)


def main():
    base_url = wait_for_metadata_service()
    available, version, results = read_v2(base_url)
    metadata = results["metadata"]
    if "random_seed" in metadata:
        metadata["random_seed"] = len(metadata["random_seed"])
    userdata = results["userdata"]
    results["userdata"] = base64.b64encode(userdata if isinstance(userdata, bytes) else userdata.encode()).decode()
    print(json.dumps({"versions": available, "version": version, "results": results, "requests": REQUESTS}))


if __name__ == "__main__":
    main()
