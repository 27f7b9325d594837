"""flowstream's SigV4 for JSON POSTs gives, byte for byte, the Authorization botocore's
signer computes for the same request at the same moment."""

from __future__ import annotations

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotocoreCredentials

from flowstream.sigv4 import Credentials, JsonSigner

TARGET = "DynamoDBStreams_20120810.GetRecords"


def botocore_headers(
    url: str, body: bytes, credentials: Credentials, *, region: str, amz_date: str
) -> dict[str, str]:
    """What botocore's SigV4Auth signs for a JSON POST of `body` at `amz_date`."""
    request = AWSRequest(
        method="POST",
        url=url,
        data=body,
        headers={"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": TARGET},
    )
    auth = SigV4Auth(
        BotocoreCredentials(credentials.access_key, credentials.secret_key, credentials.token),
        "dynamodb",
        region,
    )
    # add_auth() takes the moment from the clock; these are its steps at a fixed one.
    request.context["timestamp"] = amz_date
    auth._modify_request_before_signing(request)
    signature = auth.signature(
        auth.string_to_sign(request, auth.canonical_request(request)), request
    )
    auth._inject_signature_to_request(request, signature)
    return dict(request.headers.items())


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8123",
        "http://127.0.0.1:8123/",
        "https://streams.dynamodb.eu-west-1.amazonaws.com",
        "https://streams.dynamodb.eu-west-1.amazonaws.com:443",
        "https://streams.example.internal:8443/",
        "http://localhost:80",
        "http://[::1]:4566",
    ],
)
@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzEJr//////////wEaDN+token/with+signs=="])
def test_same_authorization_as_botocore(url: str, token: str | None) -> None:
    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    signer = JsonSigner(url, region="eu-west-1", service="dynamodb")
    body = b'{"ShardIterator":"arn:aws:dynamodb:eu-west-1:1:x|1|AAAA+/=","Limit":1000}'
    amz_date = "20261126T193000Z"
    ours = signer.headers(TARGET, body, credentials, amz_date=amz_date)
    theirs = botocore_headers(signer.url, body, credentials, region="eu-west-1", amz_date=amz_date)
    assert ours == theirs


def test_a_new_day_and_a_rotated_secret_get_new_keys() -> None:
    signer = JsonSigner("http://127.0.0.1:9000", region="us-east-1", service="dynamodb")
    body = b"{}"
    first = Credentials("AKID", "secret-1", None)
    rotated = Credentials("AKID", "secret-2", None)
    for credentials, amz_date in [
        (first, "20261126T235959Z"),
        (first, "20261127T000001Z"),
        (rotated, "20261127T000002Z"),
        (first, "20261126T235959Z"),
    ]:
        assert signer.headers(TARGET, body, credentials, amz_date=amz_date) == botocore_headers(
            signer.url, body, credentials, region="us-east-1", amz_date=amz_date
        )


def test_the_signature_covers_the_body_and_the_target() -> None:
    signer = JsonSigner("http://127.0.0.1:9000", region="us-east-1", service="dynamodb")
    credentials = Credentials("AKID", "secret", None)
    moment = "20261126T120000Z"
    base = signer.headers(TARGET, b'{"Limit":1}', credentials, amz_date=moment)
    other_body = signer.headers(TARGET, b'{"Limit":2}', credentials, amz_date=moment)
    other_target = signer.headers(TARGET + "X", b'{"Limit":1}', credentials, amz_date=moment)
    assert (
        len({base["Authorization"], other_body["Authorization"], other_target["Authorization"]})
        == 3
    )


def test_an_endpoint_with_a_path_is_refused() -> None:
    with pytest.raises(ValueError, match="root only"):
        JsonSigner("https://proxy.example.com/aws/streams", region="us-east-1", service="dynamodb")


@pytest.mark.parametrize("token", ["FwoG  token", " FwoGtoken", "FwoGtoken ", "Fwo\tG"])
def test_a_session_token_is_signed_with_its_whitespace_collapsed(token: str) -> None:
    # SigV4 canonicalises a signed header value: ends trimmed, whitespace runs collapsed
    # (botocore and AWS both); the X-Amz-Security-Token header carries it unchanged.
    credentials = Credentials("AKIDEXAMPLE", "secret", token)
    signer = JsonSigner("https://streams.example.com", region="eu-west-1", service="dynamodb")
    body = b'{"Limit":1}'
    amz_date = "20261126T193000Z"
    ours = signer.headers(TARGET, body, credentials, amz_date=amz_date)
    assert ours == botocore_headers(
        signer.url, body, credentials, region="eu-west-1", amz_date=amz_date
    )
    assert ours["X-Amz-Security-Token"] == token


@pytest.mark.parametrize(
    "url",
    [
        "http://LOCALHOST:8000",
        "HTTPS://Streams.Example.COM:443/",
        "https://user:pw@host.example:8443",
        "http://[::FFFF:1.2.3.4]:9000",
        "http://[fe80::1%25eth0]:9000",
        "http://host.example:/",
        "http://[::1]",
    ],
)
def test_odd_hosts_are_signed_as_botocore_signs_them(url: str) -> None:
    credentials = Credentials("AKIDEXAMPLE", "secret", "FwoG+token/=")
    signer = JsonSigner(url, region="eu-west-1", service="dynamodb")
    body = b'{"Limit":1}'
    amz_date = "20261126T193000Z"
    ours = signer.headers(TARGET, body, credentials, amz_date=amz_date)["Authorization"]
    theirs = botocore_headers(url, body, credentials, region="eu-west-1", amz_date=amz_date)
    assert ours == theirs["Authorization"]
