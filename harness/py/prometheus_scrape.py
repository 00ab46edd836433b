"""Scrapes a Prometheus endpoint and parses it with prometheus_client's own
parsers (the Python client from PyPI), as a real scraper would.

Usage: prometheus_scrape.py URL

Fetches URL twice: once as a plain client (the Prometheus text format,
parsed with prometheus_client.parser), once asking for OpenMetrics (parsed
with prometheus_client.openmetrics.parser, which also insists on the
format's rules, e.g. the closing `# EOF`). Prints one JSON object: the
content types, and every sample of the text format as
{"name", "labels", "value"}, with the metric families' types.
"""

import json
import sys
import urllib.request

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text


def fetch(url, accept=None):
    request = urllib.request.Request(url)
    if accept:
        request.add_header("Accept", accept)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=5) as response:
        return response.headers.get("Content-Type"), response.read().decode()


def main():
    url = sys.argv[1]
    text_type, text = fetch(url)
    samples = []
    types = {}
    for family in parse_text(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples.append(
                {"name": sample.name, "labels": sample.labels, "value": sample.value}
            )
    om_type, om_text = fetch(url, "application/openmetrics-text; version=1.0.0")
    om_families = [family.name for family in parse_openmetrics(om_text)]
    print(
        json.dumps(
            {
                "content_type": text_type,
                "openmetrics_content_type": om_type,
                "openmetrics_families": om_families,
                "types": types,
                "samples": samples,
            }
        )
    )


if __name__ == "__main__":
    main()
