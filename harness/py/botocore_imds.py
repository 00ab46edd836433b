"""botocore's IMDSv2 client against the metadata service, as an AWS SDK in a
guest uses it: the default endpoint (http://169.254.169.254/), a token PUT
(`X-aws-ec2-metadata-token-ttl-seconds: 21600`), then GETs carrying the
token. IMDSv1 fallback is switched off (`ec2_metadata_v1_disabled`), so every
answer below was obtained with a token.

Prints one JSON object: the token's length, the instance id, the identity
document, the region botocore derives, and the IAM credentials it finds.
"""

import json
import os

from botocore.utils import InstanceMetadataFetcher, InstanceMetadataRegionFetcher

# The SDK's own switches must not redirect or disable it.
for var in (
    "AWS_EC2_METADATA_DISABLED",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE",
    "AWS_EC2_METADATA_V1_DISABLED",
):
    os.environ.pop(var, None)

CONFIG = {"ec2_metadata_v1_disabled": True}


def main():
    fetcher = InstanceMetadataFetcher(timeout=2, num_attempts=1, config=CONFIG)
    assert fetcher.get_base_url() == "http://169.254.169.254/", fetcher.get_base_url()
    token = fetcher._fetch_metadata_token()
    if not token:
        raise SystemExit("botocore got no IMDSv2 token")

    def get(path):
        return fetcher._get_request(path, None, token).text

    result = {
        "token_length": len(token),
        "instance_id": get("latest/meta-data/instance-id"),
        "identity": json.loads(get("latest/dynamic/instance-identity/document")),
        # Its own token PUT, then placement/availability-zone/.
        "region": InstanceMetadataRegionFetcher(timeout=2, num_attempts=1, config=CONFIG).retrieve_region(),
        # No IAM role here: botocore must find none (a 404), not fail.
        "credentials": fetcher.retrieve_iam_role_credentials(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
