"""Verifies a metadata-redirector identity token the way a third party
(Vault, SPIRE, a CI system) would: PyJWT against the JWKS that
`metadata-redirector identity jwks` prints.

usage: verify_jwt.py JWKS_FILE TOKEN AUDIENCE SUBJECT

Prints one JSON object: the verified claims, and what PyJWT made of a token
for another audience, a tampered body, and a clock an hour and a second
ahead (the token must be expired by then: exp is at most one hour away).
"""
import base64
import json
import sys

import jwt


def outcome(fn):
    try:
        fn()
        return "accepted"
    except jwt.PyJWTError as err:
        return type(err).__name__


def main():
    jwks_file, token, audience, subject = sys.argv[1:5]
    with open(jwks_file) as f:
        jwks = jwt.PyJWKSet.from_dict(json.load(f))
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in jwks.keys if k.key_id == kid)
    algorithms = [getattr(key, "algorithm_name", None) or jwt.get_unverified_header(token)["alg"]]
    claims = jwt.decode(token, key.key, algorithms=algorithms, audience=audience)
    assert claims["sub"] == subject, claims

    header, body, signature = token.split(".")
    padded = body + "=" * (-len(body) % 4)
    forged = json.loads(base64.urlsafe_b64decode(padded))
    forged["sub"] = "00000000-0000-0000-0000-000000000000"
    forged_body = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
    tampered = ".".join([header, forged_body, signature])

    print(json.dumps({
        "claims": claims,
        "alg": algorithms[0],
        "other_audience": outcome(
            lambda: jwt.decode(token, key.key, algorithms=algorithms, audience="someone-else")),
        "tampered": outcome(
            lambda: jwt.decode(tampered, key.key, algorithms=algorithms, audience=audience)),
        # A negative leeway moves the verifier's clock forward (iat is not
        # checked there: it would be "in the future" for that clock).
        "an_hour_later": outcome(
            lambda: jwt.decode(token, key.key, algorithms=algorithms, audience=audience,
                               leeway=-3601, options={"verify_iat": False})),
    }))


if __name__ == "__main__":
    main()
