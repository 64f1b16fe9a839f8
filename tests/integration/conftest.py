"""Fixtures for the integration tests: an S3 server on loopback, Chromium, a single-node Slurm."""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace

import boto3
import pytest
from moto.server import ThreadedMotoServer

import browser
from harness import S3_KEYS
from slurm_cluster import slurm_cluster_fixture

# Started once for all Slurm tests (installing it the first time), stopped at the end.
slurm = slurm_cluster_fixture(name="slurm", scope="session")


@pytest.fixture(scope="module")
def s3_bucket():
    """endpoint, bucket and client of a moto S3 server on 127.0.0.1, on a port the OS picked; stopped afterwards."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request would bury failure output
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"],
    )
    client.create_bucket(Bucket="hemaflow-test")
    yield SimpleNamespace(endpoint=endpoint, bucket="hemaflow-test", client=client)
    server.stop()


@pytest.fixture(scope="session")
def chromium():
    """Path of Chromium, installed from Debian if missing (as root); skips with the reason where it cannot be."""
    start = time.monotonic()
    try:
        installed_in = browser.ensure_chromium()
    except browser.ChromiumUnavailable as err:
        pytest.skip(str(err))
    if installed_in:
        print(f"\nchromium installed in {installed_in:.0f} s (fixture {time.monotonic() - start:.0f} s)")
    return browser.CHROMIUM
