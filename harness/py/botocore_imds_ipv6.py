"""botocore's IMDSv2 client in IPv6 endpoint mode, chosen the way an
operator does it (AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6): the base
URL must be http://[fd00:ec2::254]/, and with IMDSv1 fallback off every
answer is obtained with a token.

Prints one JSON object: the base URL, the token's length, the instance id.
"""

import json
import os

import botocore.session
from botocore.utils import InstanceMetadataFetcher

os.environ.pop("AWS_EC2_METADATA_SERVICE_ENDPOINT", None)
os.environ.pop("AWS_EC2_METADATA_DISABLED", None)
os.environ["AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE"] = "IPv6"


def main():
    # As botocore's credential chain does: the session reads the variable,
    # the provider lowercases it.
    session = botocore.session.get_session()
    mode = session.get_config_variable("ec2_metadata_service_endpoint_mode")
    config = {
        "ec2_metadata_service_endpoint_mode": (mode or "").lower(),
        "ec2_metadata_v1_disabled": True,
    }
    fetcher = InstanceMetadataFetcher(timeout=2, num_attempts=1, config=config)
    token = fetcher._fetch_metadata_token()
    if not token:
        raise SystemExit("botocore got no IMDSv2 token over IPv6")
    result = {
        "base_url": fetcher.get_base_url(),
        "token_length": len(token),
        "instance_id": fetcher._get_request("latest/meta-data/instance-id", None, token).text,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
